"""Typed, self-checking specs and the one method registry (issue 14)."""
import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from metatpt_jax import adapt, metatpt, registry, tpt
from metatpt_jax.bench import defaults
from metatpt_jax.bench import fingerprint as fp_lib
from metatpt_jax.bench import methods as methods_lib
from metatpt_jax.errors import UserError
from metatpt_jax.specs import Spec
from tests import method_helpers as h

RESULTS = pathlib.Path(__file__).resolve().parents[1] / "results"


@pytest.mark.parametrize("spec_type,field,typo,valid", [
    (metatpt.MetaTPTSpec, "order", "frist", "('second', 'first')"),
    (metatpt.MetaTPTSpec, "augment", "learnt", "('learned', 'fixed', 'frozen')"),
    (metatpt.MetaTPTSpec, "schedule", "dual", "('dual_loop', 'joint')"),
    (metatpt.MetaTPTSpec, "selection", "once", "('every_step', 'first_step')"),
    (metatpt.MetaTPTSpec, "inner_step", "adam", "('sgd', 'normalized')"),
    (metatpt.MetaTPTSpec, "aux_loss", "view-kl", "'view_kl'"),
    (tpt.TPTSpec, "view_kind", "augmx", "('random_crop', 'augmix')"),
])
def test_a_misspelt_variant_raises_at_construction_with_the_choices(spec_type, field, typo,
                                                                    valid):
  with pytest.raises(UserError, match=f"{spec_type.__name__}.{field}='{typo}'") as err:
    spec_type(**{field: typo})
  assert valid in str(err.value)
  with pytest.raises(UserError, match=field):  # replace() validates like construction
    spec_type().replace(**{field: typo})


@pytest.mark.parametrize("make", [
    lambda: metatpt.MetaTPTSpec(n_views=4, selection_ratio=0.1),   # keeps no view
    lambda: metatpt.MetaTPTSpec(outer_steps=0),
    lambda: metatpt.MetaTPTSpec(view_chunk=-1),
    lambda: metatpt.MetaTPTSpec(aux_loss="marginal_entropy", view_chunk=8),
    lambda: tpt.TPTSpec(steps=0),
])
def test_out_of_range_fields_raise_at_construction(make):
  with pytest.raises(UserError):
    make()


def test_specs_are_hashable_static_arguments_and_configs_turn_back_into_them():
  for kind in registry.names():
    method = registry.get(kind)
    got_kind, spec = methods_lib.method_spec(defaults.method_config(kind))
    assert got_kind == kind
    if method.spec_type is not None:
      assert spec == method.spec_type() and hash(spec) == hash(method.spec_type())
  # A list from a command-line override becomes a tuple (hashable); nested configs become specs.
  spec = tpt.TPTSpec(crop_scale=[0.5, 1.0])
  assert spec.crop_scale == (0.5, 1.0) and hash(spec)
  _, meta = methods_lib.method_spec(defaults.metatpt_method(generator=dict(hidden=8)))
  assert meta.generator.hidden == 8 and hash(meta)


def _spec_from_plain(kind, plain):
  fields = {k: v for k, v in plain.items() if k != "__type__"}
  if "generator" in fields:
    fields["generator"] = {k: v for k, v in fields["generator"].items() if k != "__type__"}
  return registry.get(kind).spec_type(**fields)


@pytest.mark.parametrize("settings_file", sorted(RESULTS.glob("*_settings.json")),
                         ids=lambda p: p.name)
def test_committed_records_keep_their_fingerprints(settings_file):
  """Every setting behind the committed records rebuilds, through today's spec types, to the
  same plain form and fingerprint: old records stay reusable (resume) and attributable."""
  settings = json.loads(settings_file.read_text())
  checked = 0
  for fingerprint, setting in settings.items():
    method = setting["method"]
    if method["spec"] is not None:
      spec_type = registry.get(method["kind"]).spec_type
      if set(method["spec"]) - {"__type__"} != set(spec_type.field_names()) - {"view_chunk"}:
        continue  # an older spec version (fields added since): computed afresh, by design
      spec = _spec_from_plain(method["kind"], method["spec"])
      assert fp_lib.result_fields(spec) == method["spec"], fingerprint
    assert fp_lib.fingerprint(setting) == fingerprint
    checked += 1
  assert checked >= 10, f"only {checked} of {len(settings)} settings are of today's spec fields"


def test_unknown_method_kind_names_the_registered_ones():
  with pytest.raises(UserError, match="zero_shot"):
    methods_lib.method_spec(ml_collections.ConfigDict(dict(kind="tpt2")))
  with pytest.raises(UserError, match="metatpt"):
    adapt.make_step("meta_tpt", None, None)


def test_unknown_config_fields_are_refused():
  with pytest.raises(UserError, match="n_view"):
    methods_lib.method_spec(defaults.tpt_method(n_view=32))


def test_a_new_method_is_one_registry_entry():
  """Registering a method makes it a step (vmap, jit), a benchmark state and a config."""
  @dataclasses.dataclass(frozen=True)
  class ScaledSpec(Spec):
    scale: float = 2.0

  def scaled_zero_shot(state, image, key, spec, mspec, source=None):
    out, metrics = registry.zero_shot_one_sample(state, image, key, None, mspec, source)
    return spec.scale * out, metrics

  registry.register(registry.Method("scaled_zero_shot", scaled_zero_shot, spec_type=ScaledSpec))
  try:
    kind, spec = methods_lib.method_spec(defaults.method_config("scaled_zero_shot", scale=3.0))
    frozen, mspec = h.tiny_frozen()
    batch = {"image": h.random_images(0, 2), "index": jnp.arange(2)}
    state = adapt.AdaptState(frozen)
    _, out = adapt.make_step(kind, spec, mspec)(state, batch, jax.random.key(0))
    _, ref = adapt.make_step("zero_shot", None, mspec)(state, batch, jax.random.key(0))
    np.testing.assert_allclose(out["logits"], 3.0 * ref["logits"], rtol=1e-6)
  finally:
    del registry.METHODS["scaled_zero_shot"]

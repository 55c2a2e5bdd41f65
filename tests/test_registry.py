"""Typed, self-checking specs and the one method registry (issue 14)."""
import dataclasses
import importlib
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from metatpt_jax import adapt, metatpt, registry, tpt
from metatpt_jax.bench import defaults, records
from metatpt_jax.bench import fingerprint as fp_lib
from metatpt_jax.bench import methods as methods_lib
from metatpt_jax.clip import checkpoint, config, model
from metatpt_jax.errors import UserError
from tests import method_helpers as h
from tests import test_every_method as every_method

ROOT = str(pathlib.Path(__file__).resolve().parents[1])
RESULTS = pathlib.Path(ROOT) / "results"


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


def _arch_from_plain(plain):
  from metatpt_jax.clip import config
  strip = lambda d: {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()
                     if k != "__type__"}
  fields = strip(plain)
  return config.CLIPArch(vision=config.VisionArch(**strip(fields.pop("vision"))),
                         text=config.TextArch(**strip(fields.pop("text"))), **fields)


@pytest.mark.parametrize("settings_file", sorted(RESULTS.glob("*_settings.json")),
                         ids=lambda p: p.name)
def test_committed_records_keep_their_fingerprints(settings_file):
  """Every setting behind the committed records rebuilds, through today's spec types, to the
  same plain form and fingerprint: old records stay attributable, and reusable (resume) where
  today's setting of their run is the same (not, e.g., the first CoOp run's records: a saved
  context's digest entered the setting after them)."""
  settings = json.loads(settings_file.read_text())
  checked = 0
  for fingerprint, setting in settings.items():
    method = setting["method"]
    if method["spec"] is not None:
      spec_type = registry.get(method["kind"]).spec_type
      if set(method["spec"]) != set(fp_lib.result_fields(spec_type())):
        continue  # an older spec version (fields added since): computed afresh, by design
      spec = _spec_from_plain(method["kind"], method["spec"])
      assert fp_lib.result_fields(spec) == method["spec"], fingerprint
    # ... and so does the architecture, through today's CLIPArch (fields added since, such as
    # VisionArch.resnet_layers, are left out at their defaults)
    assert fp_lib.result_fields(_arch_from_plain(setting["arch"])) == setting["arch"], fingerprint
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


TOY_METHOD = """
import dataclasses
from typing import Literal

from metatpt_jax import registry, specs
from metatpt_jax.zero_shot import zero_shot_one_sample


@dataclasses.dataclass(frozen=True)
class ToySpec(specs.Spec):
  scale: float = 2.0
  mode: Literal["scale", "negate"] = "scale"


def toy_one_sample(frozen, image, key, spec, mspec, source=None):
  out, metrics = zero_shot_one_sample(frozen, image, key, None, mspec, source)
  return (spec.scale if spec.mode == "scale" else -1.0) * out, metrics


registry.register(registry.Method("toy", registry.stateless(toy_one_sample),
                                  spec_type=ToySpec, group="baseline"))
"""
# A config of the user's own: it imports the module that registers the method.
TOY_CONFIG = """
import toy_method  # noqa: F401  registers "toy"
from metatpt_jax.bench import defaults


def get_config(arg=""):
  c = defaults.base_config()
  c.seeds = (0,)
  c.batch_size = 2
  c.data.cache_dir = ""
  c.plot_views = False
  c.progress_bar = False
  c.methods = dict(zero_shot=defaults.method_config("zero_shot"),
                   toy=defaults.method_config("toy", scale=3.0))
  return c
"""


@pytest.fixture
def toy_module(tmp_path, monkeypatch):
  """A method module written here and imported (so registered), removed again afterwards."""
  (tmp_path / "toy_method.py").write_text(TOY_METHOD)
  (tmp_path / "toy_config.py").write_text(TOY_CONFIG)
  monkeypatch.syspath_prepend(str(tmp_path))
  module = importlib.import_module("toy_method")
  yield module
  del registry.METHODS["toy"], sys.modules["toy_method"]


def test_a_method_from_its_own_module_runs_everywhere(toy_module, tmp_path):
  """No edit to registry.py, the tests or the configs: the module registers the method, and it
  is a step (vmap, jit), a row of the config tables, a code path of the every-method test, and
  a method of the benchmark command."""
  assert registry.names()[-1] == "toy" and "toy" in registry.names("baseline")
  assert "toy" in defaults.baselines()
  kind, spec = methods_lib.method_spec(defaults.method_config("toy", scale=3.0))
  frozen, mspec = h.tiny_frozen()
  batch = {"image": h.random_images(0, 2), "index": jnp.arange(2)}
  state = adapt.AdaptState(frozen)
  _, out = adapt.make_step(kind, spec, mspec)(state, batch, jax.random.key(0))
  _, ref = adapt.make_step("zero_shot", None, mspec)(state, batch, jax.random.key(0))
  np.testing.assert_allclose(out["logits"], 3.0 * ref["logits"], rtol=1e-6)
  # The every-method machinery: the spec's Literal field is part of the code path.
  configs = [("toy scale", defaults.method_config("toy")),
             ("toy negate", defaults.method_config("toy", mode="negate", scale=5.0)),
             ("toy scale again", defaults.method_config("toy", scale=7.0))]
  paths = every_method.code_paths(configs)
  assert sorted(paths) == [("toy", "negate", False), ("toy", "scale", False)]
  for path, (k, s, where) in paths.items():
    every_method.run_code_path(path, k, s, where)
  _toy_benchmark_run(tmp_path)


def _toy_benchmark_run(tmp_path):
  """metatpt-bench on the user's config (a tiny CLIP, an image folder): the toy's records
  carry zero-shot's predictions (its logits are zero-shot's times 3)."""
  arch = config.get_arch("tiny")
  checkpoint.save_hf(model.init_params(jax.random.key(0), arch), arch, str(tmp_path / "ckpt"))
  rng = np.random.default_rng(0)
  for name in ("cat", "dog"):
    (tmp_path / "images" / name).mkdir(parents=True)
    for i in range(2):
      pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(tmp_path / "images" / name / f"{i}.png")
  out = tmp_path / "out"
  cmd = [sys.executable, "-m", "metatpt_jax.bench.cli", f"--config={tmp_path / 'toy_config.py'}",
         f"--config.model.checkpoint={tmp_path / 'ckpt'}",
         f"--config.data.domains=('folder:{tmp_path / 'images'}:clean',)",
         "--config.data.num_images=4", f"--config.output_dir={out}"]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT]))
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  recs = records.RecordStore(str(out)).all()
  by_method = {m: sorted((r["index"], r["prediction"]) for r in recs if r["method"] == m)
               for m in ("zero_shot", "toy")}
  assert len(by_method["toy"]) == 4 and by_method["toy"] == by_method["zero_shot"]


@pytest.mark.parametrize("fields,match", [
    (dict(group="baselines"), "group='baselines'"),
    (dict(adapt_one=None), "needs adapt_one"),
    (dict(stream=lambda *a: None, init_state=lambda *a: None), "give online"),
    (dict(online=lambda spec: True), "give both"),
])
def test_a_malformed_method_is_refused_when_made(fields, match):
  base = dict(name="bad", adapt_one=lambda *a: None)
  with pytest.raises(UserError, match=match):
    registry.Method(**{**base, **fields})
  with pytest.raises(UserError, match="needs init_state"):
    registry.Method("bad", None, stream=lambda *a: None)


def test_a_name_taken_by_another_module_is_refused_and_a_reload_replaces():
  method = registry.get("tpt")
  with pytest.raises(UserError, match="registered by metatpt_jax.tpt"):
    registry.register(dataclasses.replace(method), module="someone_else")
  registry.register(method, module="metatpt_jax.tpt")  # a reloaded module registers again
  assert registry.get("tpt") is method and registry.names("main")[1] == "tpt"


def test_specs_declare_which_fields_choose_code():
  from metatpt_jax import tda
  assert tda.TDASpec().code_path() != tda.TDASpec(n_views=8).code_path()  # views or image
  assert metatpt.MetaTPTSpec(view_chunk=8).code_path() != metatpt.MetaTPTSpec().code_path()
  assert metatpt.MetaTPTSpec(inner_lr=0.3).code_path() == metatpt.MetaTPTSpec().code_path()


def test_paper_configs_give_tpts_views_to_every_method_that_tunes_on_them():
  methods = every_method.config_module("paper").get_config("dtd,all").methods
  tuned_on_views = {n for n, m in methods.items() if m.get("view_kind") == "augmix"}
  assert tuned_on_views == {"tpt", "ctpt", "metatpt_fixed_aug", "tda"}  # TDA: its authors'

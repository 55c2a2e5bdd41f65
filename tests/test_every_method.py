"""Every method of every benchmark config runs (issue 14): a smoke run on a tiny CLIP.

Methods that differ only in numbers (learning rates, step counts, view counts) run the same
code, so each config method is reduced to its code path (`_code_path`: the kind, every
variant field, chunked or not, and the generator's switches) and each distinct path is run
once, shrunk to a tiny size (one step: multi-step tuning runs in the variant and parity tests), through `adapt.make_step` and the method's per-domain
`prepare` where it has one. A new Literal field of a spec that `CODE_FIELDS` does not list
fails a test, so a new variant cannot slip by untested.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metatpt_jax import adapt, registry, sharding, specs
from metatpt_jax.bench import methods as methods_lib
from metatpt_jax.data import benchmarks
from tests import method_helpers as h
from tests.config_files import config_module


def _config_methods():
  """(config name, method name, method config) for every method of every benchmark config."""
  configs = {f"bench_small_v2:{v}": config_module("bench_v2").get_config(v)
             for v in ("levels", "dev", "dev_metatpt", "dev_steps", "dev_budget", "demo",
                       "test", "test_chosen", "test_ablations")}
  configs["bench_small_v2:budget_grid"] = dict(methods=config_module("bench_v2")
                                               .budget_grid())
  configs.update({f"bench_small:{v}": config_module("bench_v1").get_config(v)
                  for v in ("", "demo")})
  configs.update({f"bench_tiny:{v}": config_module("bench_tiny").get_config(v)
                  for v in ("", "quick", "tpt", "tda")})
  configs["sweep_small"] = config_module("sweep_small").get_config()
  paper = config_module("paper")
  configs.update({f"paper:{name}": paper.get_config(f"{name},all")
                  for name in benchmarks.BENCHMARKS})
  configs["bench_small_v2:test_baselines"] = config_module("bench_v2").get_config(
      "test_baselines")
  configs.update({f"throughput:{v}": config_module("throughput").get_config(v)
                  for v in ("", "cpu", "tiny", "scaling", "baselines")})
  return [(cname, mname, mcfg) for cname, cfg in configs.items()
          for mname, mcfg in cfg["methods"].items()]


# Spec fields that choose code (every Literal field must be here) and derived switches.
CODE_FIELDS = {
    "tpt": ("view_kind",), "ctpt": ("view_kind",), "zero": ("view_kind",), "mta": ("view_kind",),
    "tda": ("view_kind",),
    "metatpt": ("augment", "schedule", "order", "selection", "inner_step", "aux_loss",
                "recompute_kept"),
}
SWITCHES = {
    "tpt": lambda s: (), "ctpt": lambda s: (), "zero": lambda s: (), "mta": lambda s: (),
    "tda": lambda s: (s.n_views > 1,),
    # view_chunk splits only the inner step's gradient: the learned views' dual loop.
    "metatpt": lambda s: (s.view_chunk > 0 and s.augment == "learned" and s.schedule == "dual_loop",
                          s.generator.factor_shift, s.generator.use_feature),
}


def _code_path(kind, spec) -> tuple:
  """What decides which code runs (not the numbers it runs with)."""
  if spec is None:
    return (kind,)
  return ((kind,) + tuple(getattr(spec, f) for f in CODE_FIELDS[kind])
          + SWITCHES[kind](spec))


def _tiny(kind, spec):
  """The same code path at the test size: 8 views, 2 kept, one step (the scan over later steps
  runs in tests/test_metatpt_variants.py and tests/test_tpt_parity_torch.py)."""
  if spec is None:
    return spec
  small = dict(n_views=8 if spec.n_views > 1 else 1, selection_ratio=0.25, steps=1)
  if kind != "metatpt":
    return spec.replace(**{k: v for k, v in small.items() if k in spec.field_names()})
  del small["steps"]
  chunked = spec.view_chunk and spec.augment == "learned" and spec.schedule == "dual_loop"
  return spec.replace(outer_steps=1, inner_steps=min(spec.inner_steps, 1),
                      view_chunk=3 if chunked else 0,
                      generator=spec.generator._replace(hidden=8), **small)


def _paths():
  paths = {}
  for cname, mname, mcfg in _config_methods():
    kind, spec = methods_lib.method_spec(mcfg)
    offline = registry.get(kind).offline_images(spec, mcfg)
    paths.setdefault(_code_path(kind, spec) + (offline > 0,), (kind, spec, f"{cname} {mname}"))
  return paths


PATHS = _paths()


def test_every_variant_field_is_part_of_the_code_path():
  for kind in registry.names():
    spec_type = registry.get(kind).spec_type
    if spec_type is not None:
      assert set(specs.literal_fields(spec_type)) <= set(CODE_FIELDS[kind]), kind


def test_every_registered_method_appears_in_some_config():
  assert {kind for kind, _, _ in PATHS.values()} == set(registry.names())
  assert len(PATHS) >= 10, sorted(PATHS)  # the ablations are distinct paths


@pytest.mark.parametrize("path", sorted(PATHS, key=str), ids=lambda p: "-".join(map(str, p)))
def test_every_config_method_runs(path):
  kind, spec, where = PATHS[path]
  spec = _tiny(kind, spec)
  method = registry.get(kind)
  frozen, mspec = h.tiny_frozen(logit_scale=np.log(30.0))
  phi = None if method.init_phi is None else method.init_phi(jax.random.key(1), spec,
                                                             h.TEST_ARCH, len(h.CLASS_NAMES))
  state = adapt.AdaptState(frozen, phi)
  images = h.random_images(0, 1)
  if path[-1]:  # a per-domain setup on unlabeled images first (MetaTPT's offline generator)
    state = method.prepare(state, spec, mspec, images, None, jax.random.key(2))
  batch = {"image": images, "index": jnp.arange(1)}
  key = jax.random.key(0)
  # The step as the benchmark makes it, on a one-device data mesh (shard_map's type rules
  # apply); compiled without backend optimisations, as every test here (tests/conftest.py).
  mesh = sharding.make_data_mesh(jax.devices()[:1])
  _, out = adapt.make_step(kind, spec, mspec, mesh=mesh)(state, batch, key)
  assert out["logits"].shape == (1, len(h.CLASS_NAMES)), where
  assert np.all(np.isfinite(np.asarray(out["logits"]))), where

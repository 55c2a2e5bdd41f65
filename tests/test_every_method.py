"""Every method of every benchmark config runs (issue 14): a smoke run on a tiny CLIP.

Methods that differ only in numbers (learning rates, step counts, view counts) run the same
code, so each config method is reduced to its code path (`code_path`: the kind and what its
spec declares, `specs.Spec.code_path`: every choice field, its `code_fields` and switches) and
each distinct path is run once, shrunk to a tiny size (`tiny`), through `adapt.make_step` and
the method's per-domain `prepare` where it has one. A new choice field is part of every code
path by construction, so a new variant cannot slip by untested. Nothing here names a method:
tests/test_registry.py runs a method it writes itself through the same functions.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metatpt_jax import adapt, registry, sharding
from metatpt_jax.bench import methods as methods_lib
from metatpt_jax.data import benchmarks
from tests import method_helpers as h
from tests.config_files import config_module


def _config_methods():
  """(config name, method name, method config) for every method of every benchmark config."""
  configs = {f"bench_v2:{v}": config_module("bench_v2").get_config(v)
             for v in ("levels", "dev", "dev_metatpt", "dev_steps", "dev_budget", "demo",
                       "test", "test_chosen", "test_ablations")}
  configs.update({f"bench_v3:{v}": config_module("bench_v3").get_config(v)
                  for v in config_module("bench_v3").VARIANTS})
  configs["bench_v2:budget_grid"] = dict(methods=config_module("bench_v2")
                                               .budget_grid())
  configs.update({f"bench_v1:{v}": config_module("bench_v1").get_config(v)
                  for v in ("", "demo")})
  configs.update({f"bench_tiny:{v}": config_module("bench_tiny").get_config(v)
                  for v in ("", "quick", "tpt", "tda")})
  configs["sweep_small"] = config_module("sweep_small").get_config()
  paper = config_module("paper")
  configs.update({f"paper:{name}": paper.get_config(f"{name},all")
                  for name in benchmarks.BENCHMARKS})
  configs["bench_v2:test_baselines"] = config_module("bench_v2").get_config(
      "test_baselines")
  configs.update({f"throughput:{v}": config_module("throughput").get_config(v)
                  for v in ("", "cpu", "tiny", "scaling", "baselines")})
  return [(cname, mname, mcfg) for cname, cfg in configs.items()
          for mname, mcfg in cfg["methods"].items()]


def code_path(kind, spec) -> tuple:
  """What decides which code runs (not the numbers it runs with): the kind and the spec's
  declaration (`specs.Spec.code_path`)."""
  return (kind,) if spec is None else (kind,) + spec.code_path()


def tiny(spec):
  """The same code path at the test size, whatever the method: 8 views (1 stays 1), 2 kept, one
  step (the scan over later steps runs in tests/test_metatpt_variants.py and
  tests/test_tpt_parity_torch.py), chunks of 3 views, an 8-unit generator."""
  if spec is None:
    return spec
  names = spec.field_names()
  small = dict(n_views=8 if getattr(spec, "n_views", 1) > 1 else 1, selection_ratio=0.25,
               steps=1, outer_steps=1, inner_steps=min(getattr(spec, "inner_steps", 0), 1),
               view_chunk=3 if getattr(spec, "view_chunk", 0) else 0)
  if "generator" in names:
    small["generator"] = spec.generator._replace(hidden=8)
  return spec.replace(**{k: v for k, v in small.items() if k in names})


def code_paths(config_methods) -> dict:
  """code path + (reads offline images,) -> (kind, spec, where) for (where, method config)
  pairs: one entry per distinct path."""
  paths = {}
  for where, mcfg in config_methods:
    kind, spec = methods_lib.method_spec(mcfg)
    offline = registry.get(kind).offline_images(spec, mcfg)
    paths.setdefault(code_path(kind, spec) + (offline > 0,), (kind, spec, where))
  return paths


def run_code_path(path, kind, spec, where):
  """Runs one code path on a tiny CLIP through `adapt.make_step` on a one-device data mesh (as
  the benchmark makes the step: shard_map's type rules apply), after the method's per-domain
  `prepare` where the path reads offline images; checks the logits' shape and finiteness."""
  spec = tiny(spec)
  method = registry.get(kind)
  frozen, mspec = h.tiny_frozen(logit_scale=np.log(30.0))
  method_state = methods_lib.initial_method_state(kind, spec, frozen.params, h.TEST_ARCH,
                                                  h.CLASS_NAMES, jax.random.key(1))
  state = adapt.AdaptState(frozen, method_state)
  images = h.random_images(0, 1)
  if path[-1]:  # a per-domain setup on unlabeled images first (MetaTPT's offline generator)
    state = method.prepare(state, spec, mspec, images, None, jax.random.key(2))
  batch = {"image": images, "index": jnp.arange(1)}
  mesh = sharding.make_data_mesh(jax.devices()[:1])
  _, out = adapt.make_step(kind, spec, mspec, mesh=mesh)(state, batch, jax.random.key(0))
  assert out["logits"].shape == (1, len(h.CLASS_NAMES)), where
  assert np.all(np.isfinite(np.asarray(out["logits"]))), where


PATHS = code_paths((f"{cname} {mname}", mcfg) for cname, mname, mcfg in _config_methods())


def test_every_registered_method_appears_in_some_config():
  assert {kind for kind, _, _ in PATHS.values()} == set(registry.names())
  assert len(PATHS) >= 10, sorted(PATHS)  # the ablations are distinct paths


@pytest.mark.parametrize("path", sorted(PATHS, key=str), ids=lambda p: "-".join(map(str, p)))
def test_every_config_method_runs(path):
  run_code_path(path, *PATHS[path])

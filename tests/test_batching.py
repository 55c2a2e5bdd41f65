"""Batched steps (`adapt.make_step`) behave as independent per-sample adaptations.

For zero-shot, TPT and MetaTPT: the vmapped step equals a Python loop over the per-sample
function with key `fold_in(key, index)`; a sample's result does not depend on its batch
partners or its position; a second call with the same shapes reuses the compiled step; and
adaptation is episodic (nothing learnt on one batch reaches the next).
"""
from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metatpt_jax import adapt, metatpt, tpt
from metatpt_jax import generator as gen
from tests import method_helpers as h

BATCH = 4
# vmap turns per-sample matmuls into batched ones whose sums XLA may order differently, so the
# loop and the batch differ by fp32 rounding: measured <= 7e-7 relative to the largest logit.
LOOP_RTOL = 1e-5
# The same compiled program on permuted rows: measured bitwise equal; 1e-6 relative allows a
# backend that vectorises batch rows unevenly, and is far below the effect of a wrong key or a
# leaked partner (logits change by O(1)).
PARTNER_RTOL = 1e-6

SPECS = {
    "zero_shot": None,
    # Small view counts keep compiles short; selection_ratio 0.25 keeps 2 of 8 views (TPT's 0.1
    # would keep none). Two TPT steps exercise the reuse of the first step's selection.
    "tpt": tpt.TPTSpec(n_views=8, selection_ratio=0.25, steps=2),
    "metatpt": metatpt.MetaTPTSpec(n_views=8, selection_ratio=0.25,
                                   generator=gen.GeneratorSpec(hidden=8)),
}


@pytest.fixture(scope="module")
def frozen_and_spec():
  # Logit scale 10: the random tiny CLIP's cosines spread widely, and at 100 every prediction
  # would be one-hot, hiding differences in the adaptation.
  return h.tiny_frozen(seed=0, logit_scale=np.log(10.0))


@pytest.fixture(scope="module")
def method_setup(frozen_and_spec):
  """Per method, built once: (state, jitted step, jitted per-sample fn)."""
  frozen, mspec = frozen_and_spec
  cache = {}

  def get(method):
    if method not in cache:
      spec = SPECS[method]
      # perturb: a generator off its zero-initialised output layer, so phi matters.
      phi = h.init_phi(spec, perturb=0.1) if method == "metatpt" else None
      state = adapt.AdaptState(frozen, phi)
      cache[method] = (state, adapt.make_step(method, spec, mspec),
                       jax.jit(adapt.per_sample_fn(method, spec, mspec)))
    return cache[method]

  return get


def _batch(images, indices):
  return {"image": jnp.asarray(images), "index": jnp.asarray(indices, jnp.int32)}


def _rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)


def _assert_same_sample(got, want, rtol, label):
  for name in want:
    if name == "prediction" or np.issubdtype(np.asarray(want[name]).dtype, np.integer):
      np.testing.assert_array_equal(got[name], want[name], err_msg=f"{label}: {name}")
    else:
      err = _rel_err(got[name], want[name])
      assert err <= rtol, f"{label}: {name} differs by {err:.2e} (relative)"


def _row(metrics, i):
  return {k: np.asarray(v)[i] for k, v in metrics.items()}


METHODS = list(SPECS)


@pytest.mark.parametrize("method", METHODS)
def test_vmap_equals_python_loop(method, method_setup):
  state, step, one = method_setup(method)
  images, indices = h.random_images(0, BATCH), np.array([3, 0, 7, 12])  # any sample ids
  key = jax.random.key(5)
  _, batched = step(state, _batch(images, indices), key)
  worst = 0.0
  for i, index in enumerate(indices):
    logits, metrics = one(state, images[i], jax.random.fold_in(key, index))
    want = dict(metrics, logits=logits, prediction=jnp.argmax(logits))
    _assert_same_sample(_row(batched, i), want, LOOP_RTOL, f"{method} sample {i}")
    worst = max(worst, _rel_err(batched["logits"][i], logits))
  print(f"{method}: vmap vs loop, max relative logit error {worst:.1e}")


@pytest.mark.parametrize("method", METHODS)
def test_result_independent_of_batch_partners_and_order(method, method_setup):
  state, step, _ = method_setup(method)
  images = h.random_images(1, 2 * BATCH)
  key = jax.random.key(6)
  base = _batch(images[:BATCH], np.arange(BATCH))
  _, ref = step(state, base, key)
  # Same samples in reverse order, and sample 0 with entirely different partners.
  perm = np.array([3, 1, 0, 2])
  _, permuted = step(state, _batch(images[:BATCH][perm], perm), key)
  others = np.concatenate([[0], np.arange(BATCH + 1, 2 * BATCH)])
  _, swapped = step(state, _batch(images[others], others), key)
  for pos, sample in enumerate(perm):
    _assert_same_sample(_row(permuted, pos), _row(ref, sample), PARTNER_RTOL,
                        f"{method}: sample {sample} at position {pos}")
  _assert_same_sample(_row(swapped, 0), _row(ref, 0), PARTNER_RTOL,
                      f"{method}: sample 0 with other partners")


@pytest.mark.parametrize("method", ["tpt", "metatpt"])
def test_sample_key_comes_from_its_index(method, method_setup):
  # The partner test is only meaningful if the key matters: the same image under another index
  # draws other views and so adapts differently.
  state, step, _ = method_setup(method)
  image = h.random_images(2, 1)
  _, out = step(state, _batch(jnp.repeat(image, BATCH, 0), np.arange(BATCH)), jax.random.key(7))
  assert _rel_err(out["logits"][1], out["logits"][0]) > 1e-3


@contextlib.contextmanager
def count_backend_compiles():
  """Counts XLA compilations (any jitted function) inside the block: yields a list to len()."""
  compiles = []

  def listener(event, duration, **kwargs):
    del duration, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(event)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield compiles
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


@pytest.mark.parametrize("method", METHODS)
def test_second_call_does_not_recompile(method, method_setup):
  state, step, _ = method_setup(method)
  # All inputs are made before counting (making them compiles small helper functions).
  first = _batch(h.random_images(3, BATCH), np.arange(BATCH))
  second = _batch(h.random_images(4, BATCH), np.arange(BATCH, 2 * BATCH))
  loader = {"image": np.asarray(h.random_images(5, BATCH)),
            "index": np.arange(2 * BATCH, 3 * BATCH, dtype=np.int32)}
  keys = [jax.random.key(k) for k in (8, 9, 10)]
  new_state, _ = step(state, first, keys[0])
  assert step.jitted._cache_size() == 1
  with count_backend_compiles() as compiles:
    # New data, a new key and the state the first call returned: the same executable.
    new_state, out = step(new_state, second, keys[1])
    assert step.jitted._cache_size() == 1
    # Host NumPy inputs, as a data loader hands them over: jit's C++ dispatch cache keys on
    # the argument types, so `_cache_size` grows by one entry, but nothing is compiled again.
    step(new_state, loader, keys[2])
    jax.block_until_ready(out)
  assert not compiles, f"{len(compiles)} compilation(s) on calls with unchanged shapes"


@pytest.mark.parametrize("method", METHODS)
def test_adaptation_is_episodic(method, method_setup):
  state, step, _ = method_setup(method)
  images = h.random_images(11, 2 * BATCH)
  batch_a = _batch(images[:BATCH], np.arange(BATCH))
  batch_b = _batch(images[BATCH:], np.arange(BATCH, 2 * BATCH))
  key = jax.random.key(12)
  after_a, _ = step(state, batch_a, key)
  _, b_after_a = step(after_a, batch_b, key)
  _, b_alone = step(state, batch_b, key)
  for i in range(BATCH):
    _assert_same_sample(_row(b_after_a, i), _row(b_alone, i), PARTNER_RTOL,
                        f"{method}: sample {BATCH + i} after another batch")
  # The state carries nothing adapted: frozen weights, initial context and phi come back as
  # they went in.
  for got, want in zip(jax.tree.leaves((after_a.frozen, after_a.method_state)),
                       jax.tree.leaves((state.frozen, state.method_state))):
    np.testing.assert_array_equal(got, want)

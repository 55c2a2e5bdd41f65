"""MetaTPT's meta-gradients stay finite on hostile inputs; bad images are refused up front.

Hostile inputs: constant (black, white, grey) and binary images, whose view features coincide
and whose predictions saturate; generators pushed far off their initialisation so the squashed
factors (normal CDF, tanh) saturate and crops hit the frame; large generator noise.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metatpt_jax import adapt, image_ops, metatpt, metatpt_inner, tpt
from metatpt_jax import generator as gen
from metatpt_jax.errors import UserError
from metatpt_jax.frozen_clip import encode_images
from tests import method_helpers as h

NUM_SAMPLES = 100
SPEC = metatpt.MetaTPTSpec(n_views=8, selection_ratio=0.25, inner_lr=0.5,
                           generator=gen.GeneratorSpec(hidden=8))
S = h.TEST_ARCH.vision.image_size


def _hostile_images():
  """[100, S, S, 3]: 60 random, 10 black, 10 white, 10 grey levels, 10 binary noise."""
  rng = np.random.default_rng(0)
  random = rng.uniform(size=(60, S, S, 3))
  black, white = np.zeros((10, S, S, 3)), np.ones((10, S, S, 3))
  grey = np.broadcast_to(np.linspace(0.05, 0.95, 10)[:, None, None, None], (10, S, S, 3))
  binary = rng.integers(0, 2, size=(10, S, S, 3)).astype(np.float64)
  return np.concatenate([random, black, white, grey, binary]).astype(np.float32)


def _perturbed_phis(num):
  """Generator parameters [num, ...]: from the initialisation (0) to 100x its weight scale."""
  phi = h.init_phi(SPEC)
  strengths = jnp.concatenate([jnp.zeros(10), jnp.logspace(-2, 2, num - 10)])
  leaves, tree = jax.tree.flatten(phi)
  keys = jax.random.split(jax.random.key(3), len(leaves))
  leaves = [x + strengths.reshape((-1,) + (1,) * x.ndim) * jax.random.normal(k, (num,) + x.shape)
            for x, k in zip(leaves, keys)]
  return jax.tree.unflatten(tree, leaves)


@functools.partial(jax.jit, static_argnums=(5, 6))
def _meta_grads(frozen, phis, images, noise_keys, noise_scales, spec, mspec):
  def one(phi, image, key, noise_scale):
    feature0 = encode_images(frozen, image[None], mspec)[0]
    noise = noise_scale * gen.sample_noise(key, spec.n_views - 1)
    ep = metatpt_inner.Episode(image, feature0, noise)
    meta = {"ctx": frozen.ctx_init, "phi": phi}
    return jax.value_and_grad(lambda m: metatpt.outer_loss(frozen, m, ep, spec, mspec))(meta)
  return jax.vmap(one)(phis, images, noise_keys, noise_scales)


@pytest.mark.parametrize("logit_scale", [np.log(100.0), np.log(10.0)], ids=["scale100", "scale10"])
def test_second_order_meta_gradients_are_finite(logit_scale):
  # CLIP's scale 100 saturates the tiny model's softmax (near one-hot predictions, log-probs
  # of -1e2); 10 keeps every term active. Both must give finite values.
  frozen, mspec = h.tiny_frozen(seed=0, logit_scale=logit_scale)
  images = jnp.asarray(_hostile_images())
  keys = jax.random.split(jax.random.key(4), NUM_SAMPLES)
  noise_scales = jnp.where(jnp.arange(NUM_SAMPLES) % 4 == 3, 10.0, 1.0)  # every 4th: far tails
  assert SPEC.order == "second"
  losses, grads = _meta_grads(frozen, _perturbed_phis(NUM_SAMPLES), images, keys, noise_scales,
                              SPEC, mspec)
  bad = {"loss": np.flatnonzero(~np.isfinite(np.asarray(losses)))}
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    g = np.asarray(g).reshape(NUM_SAMPLES, -1)
    bad[jax.tree_util.keystr(path)] = np.flatnonzero(~np.isfinite(g).all(axis=1))
  bad = {name: idx.tolist() for name, idx in bad.items() if idx.size}
  assert not bad, f"non-finite values at samples {bad}"
  # Not vacuous: the prompt and the generator both receive gradient on most samples.
  ctx_norm = np.linalg.norm(np.asarray(grads["ctx"]).reshape(NUM_SAMPLES, -1), axis=1)
  phi_norm = np.linalg.norm(np.stack([np.asarray(g).reshape(NUM_SAMPLES, -1).sum(1)
                                      for g in jax.tree.leaves(grads["phi"])], 1), axis=1)
  assert np.mean(ctx_norm > 0) > 0.5 and np.mean(phi_norm > 0) > 0.5


# ------------------------------------------------------------------ input validation
SPECS = {"zero_shot": None, "tpt": tpt.TPTSpec(n_views=8, selection_ratio=0.25), "metatpt": SPEC}


@pytest.fixture(scope="module")
def frozen_and_spec():
  return h.tiny_frozen(seed=0)


def _fresh_step(method, frozen_and_spec):
  frozen, mspec = frozen_and_spec
  phi = h.init_phi(SPEC) if method == "metatpt" else None
  step = adapt.make_step(method, SPECS[method], mspec)
  assert step.jitted._cache_size() == 0
  return step, adapt.AdaptState(frozen, phi)


def _call(step, state, images):
  return step(state, {"image": images, "index": np.arange(len(images), dtype=np.int32)},
              jax.random.key(0))


@pytest.mark.parametrize("method", list(SPECS))
@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_images_are_rejected_before_any_work(method, bad_value, frozen_and_spec):
  step, state = _fresh_step(method, frozen_and_spec)
  images = np.asarray(h.random_images(0, 6)).copy()
  images[4, 3, 5, 1] = bad_value
  with pytest.raises(UserError, match=r"NaN/Inf.*samples \[4\]"):
    _call(step, state, images)
  assert step.jitted._cache_size() == 0  # nothing was traced, compiled or run


def test_non_finite_error_names_every_bad_sample(frozen_and_spec):
  step, state = _fresh_step("tpt", frozen_and_spec)
  images = np.asarray(h.random_images(0, 6)).copy()
  images[1, 0, 0, 0], images[5, 2, 2, 2] = np.nan, np.inf
  with pytest.raises(UserError, match=r"NaN/Inf.*samples \[1, 5\]"):
    _call(step, state, jnp.asarray(images))  # device arrays too
  assert step.jitted._cache_size() == 0


EXPECTED = rf"expected \[N, {S}, {S}, 3\] float in \[0, 1\]"


@pytest.mark.parametrize("shape", [
    (S, S, 3),          # one image without the batch axis
    (2, 1, S, S, 3),    # an extra axis
    (2, S, S, 4),       # RGBA
    (2, 3, S, S),       # channels first
    (2, S + 8, S + 8, 3),  # not resized to the model's image size
])
def test_wrong_rank_or_size_is_rejected_naming_the_expected_shape(shape, frozen_and_spec):
  step, state = _fresh_step("tpt", frozen_and_spec)
  images = np.zeros(shape, np.float32)
  with pytest.raises(UserError, match=rf"shape {re_tuple(shape)}; {EXPECTED}"):
    step(state, {"image": images, "index": np.arange(shape[0], dtype=np.int32)},
         jax.random.key(0))
  assert step.jitted._cache_size() == 0


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.bool_])
def test_wrong_dtype_is_rejected_naming_the_expected_input(dtype, frozen_and_spec):
  step, state = _fresh_step("tpt", frozen_and_spec)
  images = np.zeros((2, S, S, 3), dtype)
  # UserError (a ValueError), not TypeError: a wrong dtype is input the caller fixes, and
  # commands report UserErrors as one line.
  with pytest.raises(UserError, match=rf"dtype {np.dtype(dtype).name}; {EXPECTED}"):
    _call(step, state, images)
  assert step.jitted._cache_size() == 0


@pytest.mark.parametrize("images, words", [
    (np.zeros((2, S, S), np.float32), [f"shape (2, {S}, {S})", "preprocess"]),
    (np.zeros((2, S, S, 3), np.uint8), ["dtype uint8", "divide 0-255 images by 255"]),
    (np.full((2, S, S, 3), np.nan, np.float32), ["NaN/Inf", "samples [0, 1]", "drop"]),
    (np.full((2, S, S, 3), 255.0, np.float32), ["span [255, 255]", "divide by 255"]),
])
def test_each_image_error_is_one_user_error_line(images, words):
  """Commands print a UserError as one line (errors.report_user_errors), so each check's message
  must be a single line that names the problem and the fix."""
  with pytest.raises(UserError) as info:
    image_ops.check_images(images, S, batched=True)
  message = str(info.value)
  assert "\n" not in message
  for word in words:
    assert word in message, (word, message)


def re_tuple(shape):
  """Regex for a shape tuple as Python prints it."""
  return r"\(" + r",\s*".join(str(d) for d in shape) + (r",\)" if len(shape) == 1 else r"\)")

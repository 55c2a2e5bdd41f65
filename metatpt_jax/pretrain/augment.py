"""Training augmentation in JAX, per image (vmap adds the batch axis).

Why each part: in pilots, without photometric changes in pretraining, contrast, fog and
brightness shifts sat at chance; random resized crops in pretraining make TPT's crop views look
like data the model has seen. Strengths stay moderate so that corrupted test domains remain
shifts, not training conditions.

Pretraining v2 (`apply_described`): after the mild crop/rotation/flip, each image gets one
nameable transformation (`captions.DESCRIBED`) at a random strength, and its caption names it,
so the text tower learns context words that describe the image: the lever TPT's context tuning
pulls in real CLIP.
"""
from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import ml_collections

from metatpt_jax import views


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      crop_scale=(0.5, 1.0),  # area fraction of random resized crops
      crop_prob=0.5,
      rotation_deg=10.0,  # uniform in +-
      flip_prob=0.5,
      brightness=0.25,  # additive, uniform in +-
      contrast=(0.3, 1.3),  # multiplicative around the image mean, log-uniform
      noise_std=0.08,  # max std of additive Gaussian noise (uniform in [0, max])
      blur_sigma=1.2,  # max std (px) of Gaussian blur
      photometric_prob=0.5,  # each photometric op applies with this probability
  ))


def _geometric_theta(key, cfg) -> jax.Array:
  """Random resized crop (sometimes), small rotation and a horizontal flip: [2, 3]."""
  k_crop, k_use, k_rot, k_flip = jax.random.split(key, 4)
  crop = views.random_resized_crop_theta(k_crop, scale=tuple(cfg.crop_scale), flip_prob=0.0)
  crop = jnp.where(jax.random.uniform(k_use) < cfg.crop_prob, crop, views.IDENTITY)
  angle = jax.random.uniform(k_rot, (), minval=-1.0, maxval=1.0) * math.radians(cfg.rotation_deg)
  flip = jnp.where(jax.random.uniform(k_flip) < cfg.flip_prob, -1.0, 1.0)
  rot = jnp.array([[jnp.cos(angle), -jnp.sin(angle)], [jnp.sin(angle), jnp.cos(angle)]])
  linear = crop[:, :2] @ rot @ jnp.diag(jnp.array([flip, 1.0]))
  return jnp.concatenate([linear, crop[:, 2:]], axis=1)


def _blur(image, sigma):
  """Separable Gaussian blur with a 7-tap kernel (enough for sigma <= 1.5 px)."""
  taps = jnp.arange(-3, 4, dtype=image.dtype)
  kernel = jnp.exp(-0.5 * (taps / jnp.maximum(sigma, 1e-3)) ** 2)
  kernel = kernel / kernel.sum()
  padded = jnp.pad(image, ((3, 3), (3, 3), (0, 0)), mode="edge")
  rows = sum(kernel[i] * padded[i:i + image.shape[0]] for i in range(7))
  return sum(kernel[i] * rows[:, i:i + image.shape[1]] for i in range(7))


def _photometric(image, key, cfg):
  keys = jax.random.split(key, 8)
  use = jax.random.uniform(keys[0], (4,)) < cfg.photometric_prob
  sigma = jax.random.uniform(keys[1], (), maxval=cfg.blur_sigma)
  image = jnp.where(use[0], _blur(image, sigma), image)
  lo, hi = (math.log(c) for c in cfg.contrast)
  factor = jnp.exp(jax.random.uniform(keys[2], (), minval=lo, maxval=hi))
  mean = image.mean()
  image = jnp.where(use[1], (image - mean) * factor + mean, image)
  shift = jax.random.uniform(keys[3], (), minval=-cfg.brightness, maxval=cfg.brightness)
  image = jnp.where(use[2], image + shift, image)
  std = jax.random.uniform(keys[4], (), maxval=cfg.noise_std)
  noise = std * jax.random.normal(keys[5], image.shape, image.dtype)
  image = jnp.where(use[3], image + noise, image)
  return jnp.clip(image, 0.0, 1.0)


def augment_image(image: jax.Array, key: jax.Array, cfg: ml_collections.ConfigDict) -> jax.Array:
  """One augmented image.

  Args:
    image: [S, S, 3] float32 in [0, 1].
    key: PRNG key.
    cfg: `default_config()` fields (read at trace time).
  Returns:
    [S, S, 3] float32 in [0, 1].
  """
  chex.assert_rank(image, 3)
  k_geo, k_photo = jax.random.split(key)
  image = views.affine_warp(image, _geometric_theta(k_geo, cfg))
  return _photometric(image, k_photo, cfg)


def described_config() -> ml_collections.ConfigDict:
  """Strength ranges of the described transformations (uniform within each range)."""
  return ml_collections.ConfigDict(dict(
      blur_sigma=(0.7, 1.5),
      noise_std=(0.06, 0.15),
      dark_gain=(0.35, 0.65),
      bright_shift=(0.25, 0.45),
      low_contrast=(0.25, 0.5),
      rotation_deg=(30.0, 90.0),  # either sign
      small_scale=(0.45, 0.75),  # the object's side as a fraction of the frame
  ))


def _uniform(key, bounds):
  return jax.random.uniform(key, (), minval=bounds[0], maxval=bounds[1])


def _warp_on_black(img, theta):
  """affine_warp with what falls outside the image black (the packaged sets' background), not
  the border pixels repeated (which streaks objects that touch the frame)."""
  n = img.shape[0]
  grid = (jnp.arange(n, dtype=img.dtype) * 2 + 1) / n - 1
  gu, gv = jnp.meshgrid(grid, grid, indexing="xy")
  coords = jnp.stack([gu, gv, jnp.ones_like(gu)], -1) @ theta.T
  inside = (jnp.abs(coords) <= 1).all(-1)[..., None]
  return jnp.where(inside, views.affine_warp(img, theta), 0.0)


def _described_ops(cfg):
  """The transformations of `captions.DESCRIBED`, in order: fn(image, key) -> image."""
  def rotated(img, key):
    k1, k2 = jax.random.split(key)
    angle = math.radians(1.0) * _uniform(k1, cfg.rotation_deg)
    angle = jnp.where(jax.random.bernoulli(k2), angle, -angle)
    c, s = jnp.cos(angle), jnp.sin(angle)
    return _warp_on_black(img, jnp.array([[c, -s, 0.0], [s, c, 0.0]]))

  def small(img, key):
    k1, k2 = jax.random.split(key)
    scale = _uniform(k1, cfg.small_scale)
    center = (1 - scale) * jax.random.uniform(k2, (2,), minval=-1.0, maxval=1.0)
    # output u -> input (u - center) / scale: the whole image shrunk into a box at `center`
    theta = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]) / scale
    theta = theta.at[:, 2].set(-center / scale)
    return _warp_on_black(img, theta)

  def low_contrast(img, key):
    mean = img.mean()
    return (img - mean) * _uniform(key, cfg.low_contrast) + mean

  return (
      lambda img, key: img,
      lambda img, key: _blur(img, _uniform(key, cfg.blur_sigma)),
      lambda img, key: img + _uniform(key, cfg.noise_std) * jax.random.normal(
          jax.random.fold_in(key, 1), img.shape, img.dtype),
      lambda img, key: img * _uniform(key, cfg.dark_gain),
      lambda img, key: img + _uniform(key, cfg.bright_shift),
      low_contrast,
      rotated,
      small,
      lambda img, key: 1.0 - img,
  )


def apply_described(image: jax.Array, key: jax.Array, op: jax.Array,
                    cfg: ml_collections.ConfigDict, described: ml_collections.ConfigDict):
  """Pretraining v2: the mild geometric augmentation, then transformation `op` (an index into
  `captions.DESCRIBED`) at a random strength. [S, S, 3] in [0, 1] -> same."""
  chex.assert_rank(image, 3)
  k_geo, k_op = jax.random.split(key)
  image = views.affine_warp(image, _geometric_theta(k_geo, cfg))
  image = jax.lax.switch(op, _described_ops(described), image, k_op)
  return jnp.clip(image, 0.0, 1.0)

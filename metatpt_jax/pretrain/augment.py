"""Training augmentation in JAX, per image (vmap adds the batch axis).

Why each part (../shared/docs/PILOT.md): without photometric changes in pretraining, contrast,
fog and brightness shifts sat at chance; random resized crops in pretraining make TPT's crop
views look like data the model has seen. Strengths stay moderate so that corrupted test domains
remain shifts, not training conditions.
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

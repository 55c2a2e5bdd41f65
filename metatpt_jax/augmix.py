"""TPT's AugMix-style views for the fine-grained sets, in JAX (severity 1, as TPT uses).

Each view: a random resized crop + flip x_o of the (full, decoded) image, then three chains of 1-3 random
operations mixed with Dirichlet(1, 1, 1) weights, blended with x_o by a Beta(1, 1) factor.
Operation strengths follow AugMix's `sample_level(1)` ranges on 0..255 images.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from metatpt_jax import views

_WIDTH, _MAX_DEPTH = 3, 3


def _level(key):
  return jax.random.uniform(key, minval=0.1, maxval=1.0)  # AugMix sample_level(severity=1)


def _signed(key, value):
  return jnp.where(jax.random.bernoulli(key), value, -value)


def _autocontrast(img, key):
  lo, hi = img.min(axis=(0, 1)), img.max(axis=(0, 1))
  return jnp.where(hi > lo, (img - lo) / jnp.maximum(hi - lo, 1e-6), img)


def _equalize(img, key):
  """PIL's ImageOps.equalize (Pillow >= 9): an exclusive-CDF lookup table per channel; a
  channel whose non-top values are too few to spread (step 0) is left unchanged."""
  q = jnp.clip(jnp.round(img * 255), 0, 255).astype(jnp.int32)

  def one_channel(c):
    hist = jnp.bincount(c.ravel(), length=256)
    last = hist[255 - jnp.argmax(hist[::-1] > 0)]  # count of the highest occupied level
    step = (c.size - last) // 255
    lut = (step // 2 + jnp.cumsum(hist) - hist) // jnp.maximum(step, 1)
    lut = jnp.where(step > 0, jnp.clip(lut, 0, 255), jnp.arange(256))
    return lut[c] / 255
  return jnp.stack([one_channel(q[..., i]) for i in range(img.shape[-1])], -1).astype(img.dtype)


def _posterize(img, key):
  return jnp.floor(img * 255 / 16) * 16 / 255  # 4 bits kept at severity 1


def _solarize(img, key):
  threshold = (256 - jnp.floor(_level(key) * 25.6)) / 255
  return jnp.where(img >= threshold, 1 - img, img)


def _affine(img, linear, shift):
  theta = jnp.concatenate([linear, shift[:, None]], axis=1)
  return views.affine_warp(img, theta)


def _rotate(img, key):
  k1, k2 = jax.random.split(key)
  angle = _signed(k2, jnp.floor(_level(k1) * 3) * math.pi / 180)
  c, s = jnp.cos(angle), jnp.sin(angle)
  return _affine(img, jnp.array([[c, -s], [s, c]]), jnp.zeros(2))


def _shear(axis):
  def op(img, key):
    k1, k2 = jax.random.split(key)
    m = _signed(k2, _level(k1) * 0.03)
    linear = jnp.eye(2).at[axis, 1 - axis].set(m)
    return _affine(img, linear, jnp.zeros(2))
  return op


def _translate(axis):
  def op(img, key):
    k1, k2 = jax.random.split(key)
    pixels = jnp.floor(_level(k1) * img.shape[0] / 30)  # int_parameter(level, size / 3)
    shift = jnp.zeros(2).at[axis].set(_signed(k2, 2 * pixels / img.shape[0]))
    return _affine(img, jnp.eye(2), shift)
  return op


OPS = (_autocontrast, _equalize, _posterize, _rotate, _solarize, _shear(0), _shear(1),
       _translate(0), _translate(1))


def _chain(img, key):
  k_depth, *k_ops = jax.random.split(key, 1 + 2 * _MAX_DEPTH)
  depth = jax.random.randint(k_depth, (), 1, _MAX_DEPTH + 1)
  for j in range(_MAX_DEPTH):
    idx = jax.random.randint(k_ops[2 * j], (), 0, len(OPS))
    out = jax.lax.switch(idx, OPS, img, k_ops[2 * j + 1])
    img = jnp.where(j < depth, out, img)
  return img


def augmix_one(source: views.Source, key, size: int, scale=(0.08, 1.0)):
  """One AugMix view [size, size, 3] of the source image (TPT's `augmix`: the crop first)."""
  k_crop, k_w, k_m, k_chain = jax.random.split(key, 4)
  base = views.tpt_crop(source, k_crop, size, scale).astype(source.pixels.dtype)
  weights = jax.random.dirichlet(k_w, jnp.ones(_WIDTH))
  mixed = sum(weights[i] * _chain(base, k) for i, k in enumerate(jax.random.split(k_chain, _WIDTH)))
  m = jax.random.beta(k_m, 1.0, 1.0)
  return m * base + (1 - m) * mixed


def augmix_views(image, key, n_views: int, source: views.Source | None = None,
                 scale=(0.08, 1.0)):
  """View 0 = `image` [S, S, 3]; views 1..n-1 AugMix views of `source` (default: `image`)."""
  source = views.square_source(image) if source is None else source
  others = jax.vmap(lambda k: augmix_one(source, k, image.shape[0], scale))(
      jax.random.split(key, n_views - 1))
  return jnp.concatenate([image[None], others], axis=0)

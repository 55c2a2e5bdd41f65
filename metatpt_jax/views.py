"""Differentiable affine warps and TPT's random-resized-crop views, drawn in JAX from a key.

Coordinates are normalised to [-1, 1] (align_corners=False), x to the right, y down. An affine
`theta` [2, 3] maps output coordinates (u, v, 1) to the input coordinates that are sampled, as in
spatial transformer networks; a crop of half-width w centred at c is diag(w, h) | c.
"""
from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np

# NumPy, not jnp: importing the library must not start the XLA backend (jax.distributed and
# the fake-device flag have to come first).
IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)


def affine_warp(image: jax.Array, theta: jax.Array, out_size: int | None = None) -> jax.Array:
  """Bilinear sampling of `image` on the affine grid of `theta`; differentiable in both.

  Args:
    image: [H, W, C] float.
    theta: [2, 3] float, output (u, v, 1) -> input (x, y), normalised coordinates.
    out_size: side of the square output; defaults to H.
  Returns:
    [out_size, out_size, C]. Samples outside the image repeat the border pixel, so a rotated or
    sheared crop that pokes out of the frame never shows a black wedge.
  """
  chex.assert_rank(image, 3)
  chex.assert_shape(theta, (2, 3))
  h, w = image.shape[:2]
  n = out_size or h
  grid = (jnp.arange(n, dtype=theta.dtype) * 2 + 1) / n - 1  # pixel centres
  gu, gv = jnp.meshgrid(grid, grid, indexing="xy")
  coords = jnp.stack([gu, gv, jnp.ones_like(gu)], -1) @ theta.T  # [n, n, 2]
  # normalised -> pixel-centre coordinates
  px = ((coords[..., 0] + 1) * w - 1) / 2
  py = ((coords[..., 1] + 1) * h - 1) / 2
  px, py = jnp.clip(px, 0, w - 1), jnp.clip(py, 0, h - 1)
  x0 = jnp.clip(jnp.floor(px), 0, w - 2).astype(jnp.int32)
  y0 = jnp.clip(jnp.floor(py), 0, h - 2).astype(jnp.int32)
  fx, fy = (px - x0)[..., None], (py - y0)[..., None]
  at = lambda yy, xx: image[yy, xx]
  top = at(y0, x0) * (1 - fx) + at(y0, x0 + 1) * fx
  bottom = at(y0 + 1, x0) * (1 - fx) + at(y0 + 1, x0 + 1) * fx
  return (top * (1 - fy) + bottom * fy).astype(image.dtype)


def crop_theta(center_x, center_y, half_w, half_h, flip=1.0) -> jax.Array:
  """Affine of an axis-aligned crop (normalised units); flip=-1 mirrors it horizontally."""
  zero = jnp.zeros_like(half_w)
  return jnp.stack([jnp.stack([half_w * flip, zero, center_x]),
                    jnp.stack([zero, half_h, center_y])])


def random_resized_crop_theta(key: jax.Array, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                              flip_prob=0.5, attempts: int = 10) -> jax.Array:
  """torchvision's RandomResizedCrop (+ RandomHorizontalFlip) as an affine [2, 3].

  Same sampling as torchvision for a square image: up to `attempts` draws of (area, log-ratio);
  the first that fits is used, else a centre crop with the ratio clamped to `ratio`.
  """
  k_area, k_ratio, k_x, k_y, k_flip = jax.random.split(key, 5)
  area = jax.random.uniform(k_area, (attempts,), minval=scale[0], maxval=scale[1])
  log_r = jax.random.uniform(k_ratio, (attempts,), minval=math.log(ratio[0]),
                             maxval=math.log(ratio[1]))
  cw, ch = jnp.sqrt(area * jnp.exp(log_r)), jnp.sqrt(area / jnp.exp(log_r))  # side fractions
  fits = (cw <= 1) & (ch <= 1)
  first = jnp.argmax(fits)
  any_fit = fits.any()
  # torchvision's fallback for a square image: the whole image (ratio 1 lies inside `ratio`)
  cw = jnp.where(any_fit, cw[first], 1.0)
  ch = jnp.where(any_fit, ch[first], 1.0)
  # torchvision picks the top-left corner uniformly among integer offsets; continuous here
  cx = (1 - cw) * jax.random.uniform(k_x, minval=-1.0, maxval=1.0)
  cy = (1 - ch) * jax.random.uniform(k_y, minval=-1.0, maxval=1.0)
  flip = jnp.where(jax.random.bernoulli(k_flip, flip_prob), -1.0, 1.0)
  return crop_theta(cx, cy, cw, ch, flip)


def tpt_views(image: jax.Array, key: jax.Array, n_views: int, **crop_kwargs) -> jax.Array:
  """TPT's views: view 0 is `image`, views 1..n-1 random resized crops + flips of it.

  Args:
    image: [S, S, 3] float in [0, 1] (resized and centre-cropped, not yet normalised).
    n_views: total views including the original (TPT: 64).
  Returns:
    [n_views, S, S, 3].
  """
  chex.assert_rank(image, 3)
  keys = jax.random.split(key, n_views - 1)
  thetas = jax.vmap(lambda k: random_resized_crop_theta(k, **crop_kwargs))(keys)
  crops = jax.vmap(affine_warp, in_axes=(None, 0))(image, thetas)
  return jnp.concatenate([image[None], crops], axis=0)

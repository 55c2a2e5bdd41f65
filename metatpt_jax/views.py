"""TPT's views cut from the full image, and differentiable affine warps, drawn in JAX from a key.

TPT's public code cuts its random resized crops (+ flips) from the decoded image, not from the
224-px centre square that view 0 is. Here the decoded image travels as a `Source`: a padded
canvas of static shape with the image at its top-left and its valid (height, width), so shapes
stay static under jit while every image keeps its own aspect ratio. `random_resized_crop_box`
draws torchvision's `RandomResizedCrop.get_params` box (integer top, left, height, width) on the
valid extent, and `crop_resize` resamples that box as torchvision does for PIL images (PIL's
crop, then PIL's antialiased bilinear resize: a triangle filter widened by the downscale factor,
weights cut at the crop's edges and renormalised), as two small matrix products.

Affine warps (MetaTPT's generated views): coordinates are normalised to [-1, 1]
(align_corners=False), x to the right, y down, over the centred square of the valid extent (for
a square image, the image itself; for a wider one, the square view 0 shows). An affine `theta`
[2, 3] maps output coordinates (u, v, 1) to the input coordinates that are sampled, as in
spatial transformer networks; a crop of half-width w centred at c is diag(w, h) | c. Samples
clamp at the valid extent, so zooming out or shifting reaches the rest of the picture.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

# NumPy, not jnp: importing the library must not start the XLA backend (jax.distributed and
# the fake-device flag have to come first).
IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)


class Source(NamedTuple):
  """A decoded image on a padded canvas (static shape), as views are cut from it.

  Attributes:
    pixels: [M, N, 3] float in [0, 1]; the image fills [:height, :width], the rest is padding.
    extent: [2] int32 (height, width) of the image on the canvas.
  """
  pixels: jax.Array
  extent: jax.Array


def square_source(image: jax.Array) -> Source:
  """The image itself as the source (no padding): views are cut from exactly what view 0 is."""
  return Source(image, jnp.asarray(image.shape[:2], jnp.int32))


def affine_warp(image: jax.Array, theta: jax.Array, out_size: int | None = None,
                extent: jax.Array | None = None) -> jax.Array:
  """Bilinear sampling of `image` on the affine grid of `theta`; differentiable in both.

  Args:
    image: [H, W, C] float (a canvas when `extent` is given).
    theta: [2, 3] float, output (u, v, 1) -> input (x, y), normalised coordinates.
    out_size: side of the square output; defaults to H.
    extent: [2] int (height, width) of the valid region of `image` (default: all of it).
      Normalised coordinates span the centred square of the valid region.
  Returns:
    [out_size, out_size, C]. Samples outside the valid region repeat its border pixel, so a
    rotated or sheared crop that pokes out of the frame never shows a black wedge.
  """
  chex.assert_rank(image, 3)
  chex.assert_shape(theta, (2, 3))
  n = out_size or image.shape[0]
  if extent is None:
    h, w = (jnp.asarray(v, theta.dtype) for v in image.shape[:2])
  else:
    h, w = extent[0].astype(theta.dtype), extent[1].astype(theta.dtype)
  side = jnp.minimum(h, w)
  top, left = (h - side) / 2, (w - side) / 2
  grid = (jnp.arange(n, dtype=theta.dtype) * 2 + 1) / n - 1  # pixel centres
  gu, gv = jnp.meshgrid(grid, grid, indexing="xy")
  coords = jnp.stack([gu, gv, jnp.ones_like(gu)], -1) @ theta.T  # [n, n, 2]
  # normalised -> pixel-centre coordinates of the valid region
  px = left + ((coords[..., 0] + 1) * side - 1) / 2
  py = top + ((coords[..., 1] + 1) * side - 1) / 2
  px, py = jnp.clip(px, 0, w - 1), jnp.clip(py, 0, h - 1)
  x0 = jnp.clip(jnp.floor(px), 0, jnp.maximum(w - 2, 0)).astype(jnp.int32)
  y0 = jnp.clip(jnp.floor(py), 0, jnp.maximum(h - 2, 0)).astype(jnp.int32)
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


def random_resized_crop_box(key: jax.Array, extent: jax.Array, scale=(0.08, 1.0),
                            ratio=(3 / 4, 4 / 3), attempts: int = 10) -> jax.Array:
  """torchvision's `RandomResizedCrop.get_params` on an image of size `extent` (height, width).

  Up to `attempts` draws of (area fraction, log aspect ratio); the first whose rounded box fits
  is used, its top-left corner uniform over the integer positions; else torchvision's central
  fallback crop with the ratio clamped into `ratio`. Returns [4] int32 (top, left, h, w).
  """
  k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
  height, width = extent[0], extent[1]
  hf, wf = height.astype(jnp.float32), width.astype(jnp.float32)
  area = hf * wf * jax.random.uniform(k_area, (attempts,), minval=scale[0], maxval=scale[1])
  aspect = jnp.exp(jax.random.uniform(k_ratio, (attempts,), minval=math.log(ratio[0]),
                                      maxval=math.log(ratio[1])))
  ws = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)  # Python's round: half to even
  hs = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  fits = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)
  first = jnp.argmax(fits)
  in_ratio = wf / hf
  fb_w = jnp.where(in_ratio < min(ratio), width,
                   jnp.where(in_ratio > max(ratio),
                             jnp.round(hf * max(ratio)).astype(jnp.int32), width))
  fb_h = jnp.where(in_ratio < min(ratio), jnp.round(wf / min(ratio)).astype(jnp.int32), height)
  w = jnp.where(fits.any(), ws[first], fb_w)
  h = jnp.where(fits.any(), hs[first], fb_h)
  top = jnp.where(fits.any(), jax.random.randint(k_top, (), 0, height - h + 1),
                  (height - h) // 2)
  left = jnp.where(fits.any(), jax.random.randint(k_left, (), 0, width - w + 1),
                   (width - w) // 2)
  return jnp.stack([top, left, h, w]).astype(jnp.int32)


def _bilinear_weights(start, length, out_size: int, canvas_len: int) -> jax.Array:
  """[out_size, canvas_len] weights resizing canvas[start:start + length] to out_size pixels.

  Pillow's `precompute_coeffs` for its bilinear (triangle) filter: support 1 widened by the
  downscale factor (antialiasing), window bounds truncated as C casts do and clamped to the crop,
  weights renormalised to sum 1 (so the crop's edge pixels are not mixed with their neighbours
  outside the box, exactly as cropping first does).
  """
  length = length.astype(jnp.float32)
  scale = length / out_size
  filter_scale = jnp.maximum(scale, 1.0)
  centers = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale
  lo = jnp.maximum(jnp.trunc(centers - filter_scale + 0.5), 0)[:, None]
  hi = jnp.minimum(jnp.trunc(centers + filter_scale + 0.5), length)[:, None]
  x = (jnp.arange(canvas_len) - start).astype(jnp.float32)[None, :]  # position in the crop
  tri = jnp.maximum(1 - jnp.abs((x - centers[:, None] + 0.5) / filter_scale), 0.0)
  weights = jnp.where((x >= lo) & (x < hi), tri, 0.0)
  return weights / jnp.maximum(weights.sum(axis=1, keepdims=True), 1e-12)


def crop_resize(source: Source, box: jax.Array, out_size: int, flip=False) -> jax.Array:
  """The `box` (top, left, h, w) of the source resized to [out_size, out_size, 3], as
  torchvision's `resized_crop` on a PIL image (bilinear, antialiased); `flip` mirrors it."""
  pixels = source.pixels
  wy = _bilinear_weights(box[0], box[2], out_size, pixels.shape[0]).astype(pixels.dtype)
  wx = _bilinear_weights(box[1], box[3], out_size, pixels.shape[1]).astype(pixels.dtype)
  wx = jnp.where(flip, wx[::-1], wx)
  rows = jnp.einsum("oh,hwc->owc", wy, pixels, precision=jax.lax.Precision.HIGHEST)
  return jnp.einsum("pw,owc->opc", wx, rows, precision=jax.lax.Precision.HIGHEST)


def tpt_crop_params(key: jax.Array, extent: jax.Array, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                    flip_prob: float = 0.5):
  """The (box [4] int32, flip bool) of one TPT view drawn from `key`: what `tpt_crop` cuts (and
  what a reference implementation needs to cut the same view)."""
  k_box, k_flip = jax.random.split(key)
  return (random_resized_crop_box(k_box, extent, scale, ratio),
          jax.random.bernoulli(k_flip, flip_prob))


def tpt_crop(source: Source, key: jax.Array, out_size: int, scale=(0.08, 1.0),
             ratio=(3 / 4, 4 / 3), flip_prob: float = 0.5) -> jax.Array:
  """One RandomResizedCrop(out_size) + RandomHorizontalFlip view of the source."""
  box, flip = tpt_crop_params(key, source.extent, scale, ratio, flip_prob)
  return crop_resize(source, box, out_size, flip)


def tpt_views(image: jax.Array, key: jax.Array, n_views: int, source: Source | None = None,
              scale=(0.08, 1.0)) -> jax.Array:
  """TPT's views: view 0 is `image`, views 1..n-1 random resized crops + flips of the source.

  Args:
    image: [S, S, 3] float in [0, 1]: view 0 (resized and centre-cropped, not yet normalised).
    key: this sample's key; view k uses `jax.random.split(key, n_views - 1)[k - 1]`.
    n_views: total views including the original (TPT: 64).
    source: the decoded image the crops are cut from (default: `image` itself).
  Returns:
    [n_views, S, S, 3].
  """
  chex.assert_rank(image, 3)
  source = square_source(image) if source is None else source
  keys = jax.random.split(key, n_views - 1)
  crops = jax.vmap(lambda k: tpt_crop(source, k, image.shape[0], scale))(keys)
  return jnp.concatenate([image[None], crops.astype(image.dtype)], axis=0)

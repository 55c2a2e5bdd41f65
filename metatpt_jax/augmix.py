"""TPT's AugMix-style views for the fine-grained sets, in JAX (severity 1, as TPT uses).

Each view: a random resized crop + flip x_o of the (full, decoded) image, then three chains of 1-3 random
operations mixed with Dirichlet(1, 1, 1) weights, blended with x_o by a Beta(1, 1) factor.
Operation strengths follow AugMix's `sample_level(1)` ranges on 0..255 images.

The operations follow Pillow, which TPT's `augmix_ops.py` calls, pixel for pixel (checked per
operation against Pillow in tests/test_generator_views.py): the image holds uint8 levels (x / 255)
and every operation's result is rounded to them, as a PIL image is after each call; geometric
operations sample the source at pixel centres with Pillow's bilinear filter, are anchored at the
top-left corner (shear, translate) or the image centre (rotate), and fill black outside the frame.
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


def to_levels(img):
  """[0, 1] values rounded to uint8 levels / 255 (a PIL image's values)."""
  return jnp.clip(jnp.round(img * 255), 0, 255) / 255


def autocontrast(img, key=None):
  """PIL's ImageOps.autocontrast (cutoff 0): per channel, levels lo..hi stretched to 0..255
  through int(v * scale + offset); a single-level channel is left unchanged. Pillow builds the
  table in double, this in float32 (at most 1 level apart, on well under 1 % of pixels)."""
  v = jnp.round(img * 255)
  lo, hi = v.min(axis=(0, 1)), v.max(axis=(0, 1))
  scale = 255.0 / jnp.maximum(hi - lo, 1)
  out = jnp.clip(jnp.floor(v * scale - lo * scale), 0, 255)
  return jnp.where(hi > lo, out, v) / 255


def equalize(img, key=None):
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


def posterize(img, key=None, bits: int = 4):
  """PIL's ImageOps.posterize: the top `bits` bits of each level (4 at severity 1)."""
  step = 2 ** (8 - bits)
  return jnp.floor(jnp.round(img * 255) / step) * step / 255


def solarize(img, threshold):
  """PIL's ImageOps.solarize: levels >= threshold (0..256) inverted."""
  v = jnp.round(img * 255)
  return jnp.where(v >= threshold, 255 - v, v) / 255


def pil_affine(img, coeffs):
  """PIL's Image.transform(size, AFFINE, coeffs, BILINEAR) on [H, W, C] levels: output pixel
  (x, y) reads the source at (a x' + b y' + c, d x' + e y' + f) with x' = x + 0.5, y' = y + 0.5;
  a point outside [0, W) x [0, H) is black, inside it the bilinear mix of the four pixels
  around it (indices clamped at the border), truncated to a level. Pillow computes in double,
  this in float32: where the exact mix is a whole level the two can truncate to neighbouring
  levels (measured: at most 1 level, on at most 2 % of pixels)."""
  a, b, c, d, e, f = coeffs
  h, w = img.shape[:2]
  ys, xs = jnp.meshgrid(jnp.arange(h) + 0.5, jnp.arange(w) + 0.5, indexing="ij")
  xin, yin = a * xs + b * ys + c, d * xs + e * ys + f
  inside = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
  xs_, ys_ = xin - 0.5, yin - 0.5
  x0, y0 = jnp.floor(xs_), jnp.floor(ys_)
  dx, dy = (xs_ - x0)[..., None], (ys_ - y0)[..., None]
  xi = [jnp.clip(x0 + k, 0, w - 1).astype(jnp.int32) for k in (0, 1)]
  yi = [jnp.clip(y0 + k, 0, h - 1).astype(jnp.int32) for k in (0, 1)]
  v = jnp.round(img * 255)
  top = v[yi[0], xi[0]] + (v[yi[0], xi[1]] - v[yi[0], xi[0]]) * dx
  bottom = v[yi[1], xi[0]] + (v[yi[1], xi[1]] - v[yi[1], xi[0]]) * dx
  out = jnp.floor(top + (bottom - top) * dy)  # truncated, as Pillow's (UINT8) cast
  return jnp.where(inside[..., None], jnp.clip(out, 0, 255), 0.0) / 255


def rotate(img, degrees):
  """PIL's Image.rotate(degrees, BILINEAR): counter-clockwise about the image centre."""
  h, w = img.shape[:2]
  angle = -degrees * math.pi / 180
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  cx, cy = w / 2, h / 2
  return pil_affine(img, (cos, sin, cx - cos * cx - sin * cy,
                          -sin, cos, cy + sin * cx - cos * cy))


def shear(img, axis: int, level):
  """AugMix's shear_x (axis 0) / shear_y (axis 1): (1, level, 0, 0, 1, 0) / (1, 0, 0, level, 1,
  0), about the top-left corner."""
  if axis == 0:
    return pil_affine(img, (1.0, level, 0.0, 0.0, 1.0, 0.0))
  return pil_affine(img, (1.0, 0.0, 0.0, level, 1.0, 0.0))


def translate(img, axis: int, pixels):
  """AugMix's translate_x / translate_y: the source read `pixels` further along the axis."""
  shift = (pixels, 0.0) if axis == 0 else (0.0, pixels)
  return pil_affine(img, (1.0, 0.0, shift[0], 0.0, 1.0, shift[1]))


def _rotate(img, key):
  k1, k2 = jax.random.split(key)
  return rotate(img, _signed(k2, jnp.floor(_level(k1) * 3)))  # int_parameter(level, 30)


def _shear(axis):
  def op(img, key):
    k1, k2 = jax.random.split(key)
    return shear(img, axis, _signed(k2, _level(k1) * 0.03))  # float_parameter(level, 0.3)
  return op


def _translate(axis):
  def op(img, key):
    k1, k2 = jax.random.split(key)
    # int_parameter(level, IMAGE_SIZE / 3), with the image's own side as IMAGE_SIZE
    return translate(img, axis, _signed(k2, jnp.floor(_level(k1) * img.shape[0] / 30)))
  return op


def _solarize(img, key):
  return solarize(img, 256 - jnp.floor(_level(key) * 25.6))  # int_parameter(level, 256)


OPS = (autocontrast, equalize, posterize, _rotate, _solarize, _shear(0), _shear(1),
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
  """One AugMix view [size, size, 3] of the source image (TPT's `augmix`: the crop first, a
  PIL image of uint8 levels; the chains' results and the crop mixed in float)."""
  k_crop, k_w, k_m, k_chain = jax.random.split(key, 4)
  base = to_levels(views.tpt_crop(source, k_crop, size, scale).astype(source.pixels.dtype))
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

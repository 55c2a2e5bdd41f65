"""CLIP image preprocessing in NumPy: resize, center crop, scale, normalise.

Reproduces OpenAI CLIP's torchvision pipeline (Resize(S, BICUBIC) on a PIL image, CenterCrop(S),
ToTensor, Normalize), which TPT uses for view 0. The resize is PIL's antialiased bicubic,
reimplemented here: the filter widens with the downscale factor, coefficients are PIL's 22-bit
fixed point for uint8 images, and each pass (horizontal, then vertical) rounds to uint8 as PIL
does, so uint8 inputs come out as PIL's pixels. Host-side NumPy because images arrive in many
sizes; a jitted version would recompile for each one.
"""
from __future__ import annotations

import numpy as np

from metatpt_jax.errors import UserError
from metatpt_jax.image_ops import clip_normalize

_PRECISION_BITS = 32 - 8 - 2  # PIL's fixed-point coefficients for 8-bit images
_BICUBIC_SUPPORT = 2.0


def _bicubic(x):
  """PIL's bicubic kernel (a = -0.5)."""
  a = -0.5
  x = np.abs(x)
  near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
  far = (((x - 5) * x + 8) * x - 4) * a
  return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def resize_weights(in_size: int, out_size: int) -> np.ndarray:
  """PIL's antialiased bicubic resampling matrix along one axis: [out_size, in_size] float64.

  Rows sum to 1. Follows Pillow's `precompute_coeffs` (src/libImaging/Resample.c).
  """
  scale = in_size / out_size
  filter_scale = max(scale, 1.0)  # antialias: widen the kernel when shrinking
  support = _BICUBIC_SUPPORT * filter_scale
  centers = (np.arange(out_size) + 0.5) * scale
  # C casts truncate toward zero; the clamp to 0 makes that a floor for the lower bound too.
  lo = np.maximum(np.trunc(centers - support + 0.5), 0)[:, None]
  hi = np.minimum(np.trunc(centers + support + 0.5), in_size)[:, None]
  x = np.arange(in_size)[None, :]
  inv_filter_scale = 1.0 / filter_scale  # PIL multiplies by the inverse; same rounding
  weights = np.where((x >= lo) & (x < hi),
                     _bicubic((x - centers[:, None] + 0.5) * inv_filter_scale), 0.0)
  return weights / weights.sum(axis=1, keepdims=True)


def _fixed_point(weights):
  """PIL's 8-bit coefficients: weights * 2**22 rounded half away from zero, as integers."""
  scaled = weights * (1 << _PRECISION_BITS)
  return np.trunc(scaled + np.where(scaled < 0, -0.5, 0.5))


def _resample_axis(images, weights, axis, as_uint8):
  """Applies `weights` [out, in] along `axis` of float64 `images` [..., H, W, C]."""
  if as_uint8:
    # Integer products and sums below 2**40 are exact in float64, so this is PIL's int32 sum.
    out = np.moveaxis(np.tensordot(_fixed_point(weights), images, axes=([1], [axis])), 0, axis)
    return np.clip(np.floor((out + (1 << (_PRECISION_BITS - 1))) / (1 << _PRECISION_BITS)),
                   0, 255)
  return np.moveaxis(np.tensordot(weights, images, axes=([1], [axis])), 0, axis)


def resize_shorter_side(images: np.ndarray, size: int) -> np.ndarray:
  """Resizes [..., H, W, C] so the shorter side is `size` (PIL bicubic with antialiasing).

  The longer side becomes int(size * long / short), as torchvision and transformers compute it.
  uint8 input -> uint8 output rounded as PIL does; float input -> float64, clipped to [0, 1].
  """
  height, width = images.shape[-3:-1]
  short, long = sorted((height, width))
  new_long = int(size * long / short)
  new_height, new_width = (size, new_long) if height <= width else (new_long, size)
  as_uint8 = images.dtype == np.uint8
  out = images.astype(np.float64)
  passes = [(-2, width, new_width), (-3, height, new_height)]
  # Pillow 13 (the pinned version) runs the vertical pass first when the height shrinks by
  # more than twice as many pixels as the width; the order matters because each pass rounds.
  if 0 < height - new_height and height - new_height > 2 * (width - new_width):
    passes.reverse()
  for axis, in_size, out_size in passes:
    if in_size != out_size:  # PIL skips a pass that keeps its side's size
      out = _resample_axis(out, resize_weights(in_size, out_size), axis, as_uint8)
  return out.astype(np.uint8) if as_uint8 else np.clip(out, 0.0, 1.0)


def center_crop_offsets(height: int, width: int, size: int) -> tuple[int, int]:
  """(top, left) of torchvision's CenterCrop: int(round((side - size) / 2)), half to even."""
  return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


def center_crop(images: np.ndarray, size: int) -> np.ndarray:
  """Central size x size window of [..., H, W, C] (H, W >= size)."""
  height, width = images.shape[-3:-1]
  if height < size or width < size:
    raise ValueError(f"cannot center-crop {size}x{size} from a {height}x{width} image.")
  top, left = center_crop_offsets(height, width, size)
  return images[..., top:top + size, left:left + size, :]


def resize_and_center_crop(images: np.ndarray, size: int) -> np.ndarray:
  """[..., H, W, C] -> [..., size, size, C]: CLIP's view 0 before scaling and normalising.

  The one squaring rule of the project's CLIP-style inputs (image folders, paper datasets,
  `preprocess`): shorter side resized, then torchvision's centre crop. uint8 stays uint8.
  """
  return center_crop(resize_shorter_side(images, size), size)


def _validated(images: np.ndarray, rank: int, what: str) -> np.ndarray:
  """Checks rank, channels, dtype and range; greyscale [.., 1] becomes RGB by repetition."""
  images = np.asarray(images)
  if images.ndim != rank:
    raise UserError(f"{what} must have rank {rank} ([{'N, ' if rank == 4 else ''}H, W, 3]), "
                    f"got shape {images.shape}" + (" (add a channel axis: image[..., None])"
                                                   if images.ndim == rank - 1 else "") + ".")
  if images.shape[-1] not in (1, 3):
    raise UserError(f"{what} must have 3 (RGB) or 1 (greyscale) channels last, got shape "
                    f"{images.shape}; drop alpha with image[..., :3].")
  if min(images.shape[-3:-1]) < 1:
    raise UserError(f"{what} is empty: shape {images.shape}.")
  if images.dtype == np.uint8:
    pass
  elif np.issubdtype(images.dtype, np.floating):
    if not np.all(np.isfinite(images)):
      raise UserError(f"{what} contains NaN or infinite values.")
    if images.min() < 0.0 or images.max() > 1.0:
      raise UserError(f"float {what} must lie in [0, 1], got range [{images.min():.4g}, "
                       f"{images.max():.4g}]; divide 0-255 pixel values by 255.")
  else:
    raise UserError(f"{what} must be uint8 (0-255) or float in [0, 1], got dtype "
                    f"{images.dtype}.")
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)  # as PIL's convert("RGB") does for "L" images
  return images


def preprocess_batch(images: np.ndarray, size: int = 224) -> np.ndarray:
  """CLIP preprocessing of equal-sized images.

  Args:
    images: [N, H, W, 3] (or [N, H, W, 1] greyscale, repeated to RGB), uint8 in 0-255 or float
      in [0, 1].
    size: output side S (arch.vision.image_size).
  Returns:
    [N, S, S, 3] float32, CLIP-normalised.
  """
  images = resize_and_center_crop(_validated(images, 4, "images"), size)
  # float64 here (resize_shorter_side returns uint8 or float64): one rounding, to float32.
  scaled = images / 255.0 if images.dtype == np.uint8 else images
  return clip_normalize(scaled, np).astype(np.float32)


def preprocess(image: np.ndarray, size: int = 224) -> np.ndarray:
  """CLIP preprocessing of one image: resize shorter side to S, center crop, normalise.

  Args:
    image: [H, W, 3] (or [H, W, 1] greyscale, repeated to RGB), uint8 in 0-255 or float in
      [0, 1]. uint8 images give PIL's resized pixels exactly; floats skip PIL's uint8 rounding.
    size: output side S (arch.vision.image_size).
  Returns:
    [S, S, 3] float32, CLIP-normalised.
  """
  return preprocess_batch(_validated(image, 3, "image")[None], size)[0]

"""Images as the methods take them: CLIP's per-channel normalisation (the one used by every
method and by host preprocessing) and the host-side check of a batch before any compiled work."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from metatpt_jax.clip.config import IMAGE_MEAN, IMAGE_STD
from metatpt_jax.errors import UserError


def clip_normalize(images, xp=jnp):
  """[..., 3] float in [0, 1] -> CLIP-normalised, in the images' dtype.

  `xp` is the array module that computes it: jax.numpy (on the device, traceable) or numpy
  (host preprocessing in float64, rounded once by the caller).
  """
  return (images - xp.asarray(IMAGE_MEAN, images.dtype)) / xp.asarray(IMAGE_STD, images.dtype)


def _host_pieces(images):
  """(first sample index, host array) for each piece this process holds.

  A global jax.Array spanning several processes cannot be fetched whole; each process checks
  the shards it can address.
  """
  if isinstance(images, jax.Array):
    return [(s.index[0].start or 0 if s.index else 0, np.asarray(s.data))
            for s in images.addressable_shards if s.replica_id == 0]
  return [(0, np.asarray(images))]


def check_images(images, image_size: int, batched: bool) -> None:
  """Rejects malformed or non-finite images on the host, before any compiled work starts.

  Raises `UserError` (a ValueError): a bad image is the caller's input to fix, so commands
  report it as one line (`errors.report_user_errors`) rather than a traceback.
  """
  shape, dtype = tuple(np.shape(images)), np.dtype(getattr(images, "dtype", np.float64))
  want = f"[{'N, ' if batched else ''}{image_size}, {image_size}, 3] float in [0, 1]"
  if len(shape) != (4 if batched else 3) or shape[-3:] != (image_size, image_size, 3):
    raise UserError(f"images have shape {shape}; expected {want} (resize and centre-crop "
                    "with metatpt_jax.clip.preprocess first).")
  if not np.issubdtype(dtype, np.floating):
    raise UserError(f"images have dtype {dtype}; expected {want} (convert to float: divide "
                    "0-255 images by 255).")
  for offset, arr in _host_pieces(images):
    arr = arr if batched else arr[None]
    bad = ~np.isfinite(arr).reshape(arr.shape[0], -1).all(-1)
    if bad.any():
      where = (np.flatnonzero(bad)[:10] + offset).tolist()
      raise UserError(f"images contain NaN/Inf values (samples {where}); nothing was run. "
                      "Fix or drop those images.")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -1e-3 or hi > 1 + 1e-3:  # bilinear/bicubic resampling may overshoot by a hair
      raise UserError(f"image values span [{lo:.3g}, {hi:.3g}]; expected {want} (for 0-255 "
                      "images divide by 255; pass unnormalised images, CLIP normalisation is "
                      "applied inside).")

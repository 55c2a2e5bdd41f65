"""CLIP's per-channel normalisation, the one used by every method and by host preprocessing."""
from __future__ import annotations

import jax.numpy as jnp

from metatpt_jax.clip.config import IMAGE_MEAN, IMAGE_STD


def clip_normalize(images, xp=jnp):
  """[..., 3] float in [0, 1] -> CLIP-normalised, in the images' dtype.

  `xp` is the array module that computes it: jax.numpy (on the device, traceable) or numpy
  (host preprocessing in float64, rounded once by the caller).
  """
  return (images - xp.asarray(IMAGE_MEAN, images.dtype)) / xp.asarray(IMAGE_STD, images.dtype)

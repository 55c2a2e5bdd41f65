"""Per-image normalisation shared by every method: CLIP's mean/std on [0, 1] RGB."""
from __future__ import annotations

import jax.numpy as jnp

from metatpt_jax.clip.config import IMAGE_MEAN, IMAGE_STD


def clip_normalize(images):
  """[..., 3] float in [0, 1] -> CLIP-normalised."""
  return (images - jnp.asarray(IMAGE_MEAN, images.dtype)) / jnp.asarray(IMAGE_STD, images.dtype)

"""Zero-shot CLIP as a test-time method: the initial prompt on the image itself, no adaptation.

The reference every adaptation method is compared with (`registry` kind "zero_shot").
"""
from __future__ import annotations

import jax

from metatpt_jax import registry
from metatpt_jax.frozen_clip import FrozenCLIP, ModelSpec, class_features, encode_images, logits


def zero_shot_one_sample(frozen: FrozenCLIP, image: jax.Array, key: jax.Array, spec,
                         mspec: ModelSpec, source=None):
  """CLIP with the initial prompt on the image itself: [S, S, 3] -> (logits [C], no metrics)."""
  del key, spec, source
  feats = encode_images(frozen, image[None], mspec)
  return logits(frozen, feats, class_features(frozen, frozen.ctx_init, mspec))[0], {}


registry.register(registry.Method("zero_shot", registry.stateless(zero_shot_one_sample)))

"""Zero-shot accuracy of a CLIP parameter pytree on a labelled domain (template ensemble)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from metatpt_jax import batching
from metatpt_jax.clip import zeroshot
from metatpt_jax.clip.config import CLIPArch
from metatpt_jax.image_ops import clip_normalize


@functools.partial(jax.jit, static_argnums=3)
def _predict(params, images, classifier, arch):
  """Predicted classes of uint8 images; scaled and normalised on the device, not the host."""
  images = clip_normalize(images.astype(jnp.float32) / 255.0)
  return jnp.argmax(zeroshot.zeroshot_logits(params, images, classifier, arch), axis=-1)


def zero_shot_accuracy(params, arch: CLIPArch, images: np.ndarray, labels: np.ndarray,
                       class_names, templates, tokenizer, batch_size: int = 500) -> float:
  """Top-1 accuracy (%) of zero-shot CLIP with `zeroshot.build_classifier`'s prompt ensemble.

  Args:
    images: [N, S, S, 3] uint8 (S = arch.vision.image_size).
    labels: [N] int.
  """
  classifier = zeroshot.build_classifier(params, arch, class_names, templates, tokenizer)
  predictions = [np.asarray(_predict(params, padded, classifier, arch))[:len(real)]
                 for real, padded in batching.padded_batches(images, batch_size)]
  return float(100.0 * np.mean(np.concatenate(predictions) == labels))

"""Zero-shot accuracy of a CLIP parameter pytree on a labelled domain (template ensemble)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from metatpt_jax.clip import model
from metatpt_jax.clip.config import CLIPArch
from metatpt_jax.image_ops import clip_normalize


def class_embeddings(params, arch: CLIPArch, class_names, templates, tokenizer) -> jax.Array:
  """Template-ensembled class embeddings: mean of unit text embeddings, renormalised.

  Returns:
    [C, embed_dim] float32, unit norm.
  """
  texts = [t.format(name) for name in class_names for t in templates]
  ids = jnp.asarray(tokenizer(texts, context_length=arch.text.context_length))
  features = model.normalize(_encode_text(params, ids, arch))
  features = features.reshape(len(class_names), len(templates), -1).mean(axis=1)
  return model.normalize(features)


@functools.partial(jax.jit, static_argnums=2)
def _encode_text(params, ids, arch):
  return model.encode_text(params, ids, arch)


@functools.partial(jax.jit, static_argnums=3)
def _predict(params, images, classifier, arch):
  features = model.encode_image(params, clip_normalize(images.astype(jnp.float32) / 255.0), arch)
  return jnp.argmax(model.clip_logits(params, features, classifier), axis=-1)


def zero_shot_accuracy(params, arch: CLIPArch, images: np.ndarray, labels: np.ndarray,
                       class_names, templates, tokenizer, batch_size: int = 500) -> float:
  """Top-1 accuracy (%) of zero-shot CLIP.

  Args:
    images: [N, S, S, 3] uint8 (S = arch.vision.image_size).
    labels: [N] int.
  """
  classifier = class_embeddings(params, arch, class_names, templates, tokenizer)
  predictions = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    pad = batch_size - len(chunk)  # one compiled shape for every chunk
    chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
    predictions.append(np.asarray(_predict(params, chunk, classifier, arch))[:batch_size - pad])
  return float(100.0 * np.mean(np.concatenate(predictions) == labels))

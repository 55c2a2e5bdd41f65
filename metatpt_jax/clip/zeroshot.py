"""Zero-shot CLIP classification: text classifiers from prompt templates, batched logits.

A classifier is the [C, E] matrix of unit-norm class text embeddings. With several templates
each class embedding is the renormalised mean of its per-template unit embeddings, as in
OpenAI's ImageNet zero-shot notebook (prompt ensembling).
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from metatpt_jax import batching
from metatpt_jax.clip import model
from metatpt_jax.clip.config import CLIPArch

DEFAULT_TEMPLATES = ("a photo of a {}.",)


@functools.partial(jax.jit, static_argnames="arch")
def _text_features(params, token_ids, arch):
  return model.normalize(model.encode_text(params, token_ids, arch))


def _prompts(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
  if isinstance(class_names, str) or not len(class_names):
    raise ValueError(f"class_names must be a non-empty sequence of names, got {class_names!r}.")
  if isinstance(templates, str):
    templates = [templates]
  if not len(templates):
    raise ValueError("templates is empty; give at least one, e.g. 'a photo of a {}.'.")
  bad = [t for t in templates if "{}" not in t]
  if bad:
    raise ValueError(f"every template needs a '{{}}' where the class name goes; these have "
                     f"none: {bad}.")
  return [t.format(name) for name in class_names for t in templates]


def build_classifier(params, arch: CLIPArch, class_names: Sequence[str],
                     templates: Sequence[str] = DEFAULT_TEMPLATES,
                     tokenizer: Callable | None = None, batch_size: int = 256) -> jax.Array:
  """Zero-shot classifier weights from class names and prompt templates.

  Args:
    params: CLIP parameter pytree.
    arch: its architecture.
    class_names: C names, e.g. ["goldfish", "tabby cat"].
    templates: T strings with one "{}" each; T > 1 is a prompt ensemble.
    tokenizer: callable (texts, context_length=...) -> [N, L] int ids; defaults to CLIP's BPE
      tokenizer (metatpt_jax.clip.tokenizer.Tokenizer).
    batch_size: texts encoded per call (fixed, the last batch padded: one compilation).
  Returns:
    [C, E] float32, unit-norm rows.
  """
  prompts = _prompts(class_names, templates)
  if tokenizer is None:
    # Imported here: callers with their own tokenizer need not load the BPE vocabulary.
    from metatpt_jax.clip.tokenizer import default_tokenizer
    tokenizer = default_tokenizer()
  token_ids = np.asarray(tokenizer(prompts, context_length=arch.text.context_length), np.int32)
  chex.assert_shape(token_ids, (len(prompts), arch.text.context_length))
  features = np.concatenate([
      np.asarray(_text_features(params, padded, arch))[:len(real)]
      for real, padded in batching.padded_batches(token_ids, batch_size)])
  per_template = features.reshape(len(class_names), -1, features.shape[-1])  # [C, T, E]
  return model.normalize(jnp.asarray(per_template.mean(axis=1)))


def _check_inputs(images, classifier, arch: CLIPArch):
  """Shape and dtype checks; they run at trace time, so jitted callers pay nothing."""
  size = arch.vision.image_size
  expected = f"expected [N, {size}, {size}, 3] float32 (S = arch.vision.image_size = {size})"
  shape, dtype = np.shape(images), getattr(images, "dtype", None)
  if len(shape) != 4 or shape[1:] != (size, size, 3):
    raise ValueError(f"images have shape {shape}; {expected}.")
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"images have dtype {dtype}; {expected}, CLIP-normalised: run "
                     "metatpt_jax.clip.preprocess first.")
  if np.ndim(classifier) != 2 or np.shape(classifier)[1] != arch.embed_dim:
    raise ValueError(f"classifier has shape {np.shape(classifier)}; expected [C, "
                     f"{arch.embed_dim}] (arch.embed_dim), from build_classifier.")


@functools.partial(jax.jit, static_argnames="arch")
def zeroshot_logits(params, images, classifier, arch: CLIPArch):
  """CLIP logits of images against a classifier.

  Args:
    params: CLIP parameter pytree.
    images: [N, S, S, 3] float32, CLIP-normalised (see preprocess.py), S = arch.vision.image_size.
    classifier: [C, E] float32 unit-norm class embeddings (build_classifier).
    arch: architecture, static.
  Returns:
    [N, C] float32, exp(logit_scale) * cosine similarity.
  """
  _check_inputs(images, classifier, arch)
  images = images.astype(jnp.float32)
  return model.clip_logits(params, model.encode_image(params, images, arch), classifier)


def classify(params, arch: CLIPArch, images, classifier, batch_size: int = 64) -> np.ndarray:
  """Zero-shot logits for any number of images, in fixed-size batches.

  Every batch has exactly `batch_size` images (the last one padded), so any N reuses a
  single compilation.

  Args:
    images: [N, S, S, 3] float32 CLIP-normalised images, S = arch.vision.image_size.
    classifier: [C, E] unit-norm class embeddings.
  Returns:
    [N, C] float32 logits; `.argmax(-1)` gives the predicted classes.
  """
  _check_inputs(images, classifier, arch)
  images, classifier = np.asarray(images, np.float32), jnp.asarray(classifier, jnp.float32)
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}.")
  if not len(images):
    return np.zeros((0, classifier.shape[0]), np.float32)
  return np.concatenate([
      np.asarray(zeroshot_logits(params, padded, classifier, arch))[:len(real)]
      for real, padded in batching.padded_batches(images, batch_size)])

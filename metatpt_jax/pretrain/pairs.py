"""Image-caption pairs for contrastive pretraining, sampled on the host from a seed and a step.

The train splits of several sources are stacked, each with its own class names; a label is
a *global* class index (source offset + class), so captions of one class across templates
count as matches, and classes of different sources never do. A batch depends only on
(seed, step): a resumed run sees exactly the batches the uninterrupted run would have seen.

Captions come either paired (one per image, plain CLIP) or as a class-balanced set
(`captions_per_class` random templates for every class), which the class-aware loss matches
by label: with 20 classes, 60 captions carry the same text signal as 256 paired ones at a
quarter of the text-tower cost. Token rows are cut after the longest caption's EOT: with the
causal mask, positions after EOT never reach the pooled feature, so this is exact.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from metatpt_jax.clip.config import EOT_TOKEN_ID
from metatpt_jax.data import domains


class PairData(NamedTuple):
  """Training images with their caption table.

  Attributes:
    images: [N, S, S, 3] uint8.
    labels: [N] int32 global class index.
    sample_prob: [N] float64, probability of drawing each image (sums to 1).
    class_names: global class names, len C.
    captions: [C, T, L] int32 token ids (`captions.caption_table`).
  """
  images: np.ndarray
  labels: np.ndarray
  sample_prob: np.ndarray
  class_names: list
  captions: np.ndarray


def load_pairs(source_names, weights, image_size: int, make_captions, data_dir=None,
               max_images_per_source: int | None = None, seed: int = 0) -> PairData:
  """Stacks the TRAIN splits of `source_names`.

  Args:
    source_names: e.g. ("fashion_mnist", "animal_mnist").
    weights: share of each source in a batch (normalised), so a small set is not drowned.
    make_captions: `class_names -> [C, T, L]` token ids.
    max_images_per_source: keep a seeded stratified subset (tests); None keeps all.
  """
  if len(weights) != len(source_names):
    raise ValueError(f"{len(source_names)} sources but {len(weights)} weights.")
  images, labels, probs, names = [], [], [], []
  weights = np.asarray(weights, np.float64) / np.sum(weights)
  for name, weight in zip(source_names, weights):
    x, y, class_names = domains.load_source(name, "train", image_size, None, data_dir)
    if max_images_per_source:
      keep = domains.stratified_subset(y, max_images_per_source, seed)
      x, y = x[keep], y[keep]
    images.append(x)
    labels.append(y + len(names))
    probs.append(np.full(len(y), weight / len(y)))
    names += class_names
  return PairData(np.concatenate(images), np.concatenate(labels).astype(np.int32),
                  np.concatenate(probs), names, trimmed_captions(make_captions(names)))


def trimmed_captions(table: np.ndarray) -> np.ndarray:
  """The caption table [C, T, L] cut after the longest caption's EOT (exact: with the causal
  mask, later positions never reach the pooled feature)."""
  length = int(np.max(np.argmax(table == EOT_TOKEN_ID, axis=-1))) + 1
  return table[..., :length]


def sample_batch(data: PairData, seed: int, step: int, batch_size: int,
                 captions_per_class: int = 0, described_probs=None) -> dict:
  """One batch, a pure function of (seed, step).

  Args:
    captions_per_class: 0 pairs one caption with each image (K = B); k > 0 gives every
      class k captions with distinct random templates (K = C * k).
    described_probs: pretraining v2: the probability of each transformation of
      `captions.DESCRIBED` (the caption table's templates, in that order). Each image draws one
      ("ops" [B]); its caption names it, and the contrastive label is (class, transformation),
      so only identical captions count as matches of each other.
  Returns:
    dict(images [B, S, S, 3] uint8, labels [B] int32, token_ids [K, L] int32,
    caption_labels [K] int32, and "ops" [B] int32 with described_probs).
  """
  rng = np.random.default_rng([seed, step])
  index = rng.choice(len(data.labels), batch_size, p=data.sample_prob)
  labels = data.labels[index]
  num_classes, num_templates = data.captions.shape[:2]
  if described_probs is not None:
    probs = np.asarray(described_probs, np.float64)
    if len(probs) != num_templates:
      raise ValueError(f"{len(probs)} transformation probabilities for {num_templates} "
                       "described templates.")
    ops = rng.choice(num_templates, batch_size, p=probs / probs.sum()).astype(np.int32)
    combined = (labels * num_templates + ops).astype(np.int32)
    return dict(images=data.images[index], labels=combined, token_ids=data.captions[labels, ops],
                caption_labels=combined, ops=ops)
  if captions_per_class:
    caption_labels = np.repeat(np.arange(num_classes, dtype=np.int32), captions_per_class)
    template = np.concatenate([rng.permutation(num_templates)[:captions_per_class]
                               for _ in range(num_classes)])
  else:
    caption_labels = labels
    template = rng.integers(0, num_templates, batch_size)
  return dict(images=data.images[index], labels=labels,
              token_ids=data.captions[caption_labels, template], caption_labels=caption_labels)

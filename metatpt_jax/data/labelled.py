"""The labelled image set every loader returns, and its seeded class-balanced subsets.

Its own module so that `domains` (which dispatches to `benchmarks`) and `benchmarks` both import
it and neither imports the other back.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Domain(NamedTuple):
  """A labelled image set.

  Attributes:
    name: canonical spec, e.g. "fashion_mnist:gaussian_noise:5".
    images: [N, S, S, 3] uint8.
    labels: [N] int32 in [0, len(class_names)).
    class_names: natural-language class names, in label order.
  """
  name: str
  images: np.ndarray
  labels: np.ndarray
  class_names: list


def stratified_subset(labels: np.ndarray, num: int, seed: int) -> np.ndarray:
  """Indices [min(num, N)] (ascending) of a seeded subset with classes as balanced as they
  allow: classes are visited round-robin, each in its own random order."""
  if num >= len(labels):
    return np.arange(len(labels))
  rng = np.random.default_rng(seed)
  per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
  rank = np.empty(len(labels), np.int64)  # position of each image in its class's order
  for members in per_class:
    rank[members] = np.arange(len(members))
  # Round-robin = sort by (rank within class, random class tie-break).
  tiebreak = rng.permutation(len(labels))
  order = np.lexsort((tiebreak, rank))
  return np.sort(order[:num])

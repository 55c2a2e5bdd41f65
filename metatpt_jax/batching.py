"""Fixed-size batches for jitted functions: one compiled shape for any number of items."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def padded_batches(items: np.ndarray,
                   batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields (real, padded) per batch of `batch_size` consecutive rows of `items`.

  `real` holds the rows of this batch; `padded` is `real` filled up to `batch_size` rows by
  repeating its last row (a valid input, unlike zeros, whose outputs the caller drops with
  `[:len(real)]`). Works for arrays of images, token ids or indices alike.
  """
  for start in range(0, len(items), batch_size):
    real = items[start:start + batch_size]
    yield real, np.concatenate([real, np.repeat(real[-1:], batch_size - len(real), axis=0)])

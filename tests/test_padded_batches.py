"""metatpt_jax.batching.padded_batches: fixed-size batches, the last one padded."""
import numpy as np

from metatpt_jax import batching


def test_every_batch_has_batch_size_rows_and_padding_repeats_the_last_row():
  indices = np.arange(7)
  batches = list(batching.padded_batches(indices, 3))
  assert [real.tolist() for real, _ in batches] == [[0, 1, 2], [3, 4, 5], [6]]
  assert [padded.tolist() for _, padded in batches] == [[0, 1, 2], [3, 4, 5], [6, 6, 6]]
  images = np.arange(5 * 2 * 2).reshape(5, 2, 2).astype(np.uint8)
  (_, first), (real, padded) = batching.padded_batches(images, 4)
  assert first.dtype == padded.dtype == np.uint8 and padded.shape == (4, 2, 2)
  np.testing.assert_array_equal(padded, images[[4, 4, 4, 4]])
  assert len(real) == 1
  assert not list(batching.padded_batches(indices[:0], 3))

"""CLIP preprocessing against transformers' CLIPImageProcessor (PIL backend) and PIL itself."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

# CLIPImageProcessor with the PIL backend, named explicitly: without torchvision that is what
# CLIPImageProcessor resolves to, and the PIL path is OpenAI's reference.
from transformers import CLIPImageProcessorPil

from metatpt_jax.clip import preprocess as pp
from metatpt_jax.clip.config import IMAGE_MEAN, IMAGE_STD

# (height, width): landscape, portrait, square, upsampling, extreme aspect ratios (PIL then
# runs its vertical pass first for the tall ones), one side already 224.
SIZES = [(300, 400), (480, 320), (224, 224), (100, 150), (500, 375), (33, 700), (1000, 230),
         (224, 500), (640, 427), (251, 250)]
# Our resize reproduces Pillow's fixed-point arithmetic, so pixels are identical; what is left
# is float32 rounding in rescale/normalise (values ~2, ulp 2.4e-7). Measured max abs error in
# normalised units: 2.4e-7 on every size above.
PROCESSOR_ATOL = 1e-5


@pytest.fixture(scope="module")
def processor():
  # Default CLIP settings: shortest_edge 224 bicubic, center crop 224, OpenAI mean/std.
  return CLIPImageProcessorPil()


def _random_image(shape, seed):
  # Uniform noise is the hardest case for a resampler: every bicubic overshoot is clipped.
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _resized_shape(height, width, size=224):
  short, long = sorted((height, width))
  return (size, int(size * long / short)) if height <= width else (int(size * long / short), size)


@pytest.mark.parametrize("height, width", SIZES)
def test_matches_clip_image_processor(processor, height, width):
  image = _random_image((height, width, 3), seed=height * width)
  ours = pp.preprocess(image)
  assert ours.shape == (224, 224, 3) and ours.dtype == np.float32
  resized_h, resized_w = _resized_shape(height, width)
  top, left = pp.center_crop_offsets(resized_h, resized_w, 224)
  if (top, left) == ((resized_h - 224) // 2, (resized_w - 224) // 2):
    reference = processor(images=image, return_tensors="np")["pixel_values"][0]
  else:
    # transformers crops at floor(d / 2); torchvision's CenterCrop, which OpenAI's and TPT's
    # pipelines use, at round-half-even(d / 2). We follow torchvision: compare the resize with
    # the processor's and crop its output at torchvision's offsets.
    full = processor(images=image, do_center_crop=False, return_tensors="np")["pixel_values"][0]
    reference = full[:, top:top + 224, left:left + 224]
  error = np.abs(ours - reference.transpose(1, 2, 0)).max()
  print(f"{height}x{width}: max abs error vs CLIPImageProcessor {error:.2e}")
  assert error <= PROCESSOR_ATOL


@pytest.mark.parametrize("height, width", [(300, 400), (1000, 230), (17, 9)])
def test_resize_is_pils_bicubic(height, width):
  image = _random_image((height, width, 3), seed=1)
  resized_h, resized_w = _resized_shape(height, width)
  pil = np.asarray(Image.fromarray(image).resize((resized_w, resized_h), Image.BICUBIC))
  np.testing.assert_array_equal(pp.resize_shorter_side(image, 224), pil)


@pytest.mark.parametrize("side, expected", [(224, 0), (225, 0), (226, 1), (227, 2), (229, 2),
                                            (231, 4)])
def test_center_crop_offsets_follow_torchvision(side, expected):
  # torchvision: int(round((side - crop) / 2.0)), Python's round halves to even.
  assert pp.center_crop_offsets(side, 224, 224) == (expected, 0)
  assert pp.center_crop_offsets(224, side, 224) == (0, expected)


def test_float_input_close_to_uint8_input():
  # A smooth image: the float path skips PIL's rounding to uint8 after each pass, so it may
  # differ by about one grey level (1 / 255 / std ~ 0.015 normalised); 0.03 allows two.
  # Measured: 0.0147.
  y, x = np.mgrid[0:300, 0:420]
  smooth = np.stack([128 + 100 * np.sin(x / 17.0), 128 + 100 * np.cos(y / 23.0),
                     128 + 60 * np.sin((x + y) / 31.0)], axis=-1)
  image = np.round(smooth).astype(np.uint8)
  error = np.abs(pp.preprocess(image) - pp.preprocess(image / 255.0)).max()
  assert error <= 0.03, error


def test_greyscale_is_repeated_to_rgb():
  grey = _random_image((120, 90, 1), seed=2)
  np.testing.assert_array_equal(pp.preprocess(grey, size=64),
                                pp.preprocess(np.repeat(grey, 3, axis=-1), size=64))


def test_batch_equals_single_images():
  images = _random_image((3, 50, 70, 3), seed=3)
  batch = pp.preprocess_batch(images, size=32)
  assert batch.shape == (3, 32, 32, 3) and batch.dtype == np.float32
  for image, expected in zip(images, batch):
    np.testing.assert_array_equal(pp.preprocess(image, size=32), expected)


def test_constant_image_normalises_to_known_values():
  image = np.full((40, 60, 3), 255, np.uint8)
  expected = (1.0 - np.array(IMAGE_MEAN)) / np.array(IMAGE_STD)
  np.testing.assert_allclose(pp.preprocess(image, size=32), np.broadcast_to(expected, (32, 32, 3)),
                             rtol=1e-6)


@pytest.mark.parametrize("image, message", [
    (np.zeros((32, 32), np.uint8), "rank 3"),
    (np.zeros((32, 32, 4), np.uint8), "3 \\(RGB\\) or 1"),
    (np.zeros((0, 32, 3), np.uint8), "empty"),
    (np.zeros((32, 32, 3), np.int32), "uint8 .* or float"),
    (np.full((32, 32, 3), 2.0), "must lie in \\[0, 1\\]"),
    (np.full((32, 32, 3), np.nan), "NaN"),
])
def test_invalid_images_are_rejected(image, message):
  with pytest.raises(ValueError, match=message):
    pp.preprocess(image)


def test_batch_requires_rank_4():
  with pytest.raises(ValueError, match="rank 4"):
    pp.preprocess_batch(np.zeros((32, 32, 3), np.uint8))

"""The committed small CLIP loads in JAX and in PyTorch alike and really classifies."""
import os

import numpy as np
import pytest
import torch
import transformers

from metatpt_jax.clip import checkpoint, model, zeroshot
from metatpt_jax.clip.config import IMAGE_MEAN, IMAGE_STD
from metatpt_jax.data import domains

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CKPT = os.path.join(ROOT, "checkpoints", "small_clip")


@pytest.fixture(scope="module")
def small():
  return checkpoint.load_clip(CKPT)


def _normalised(images_uint8):
  return ((images_uint8.astype(np.float32) / 255 - np.array(IMAGE_MEAN, np.float32))
          / np.array(IMAGE_STD, np.float32))


def test_pytorch_loads_the_same_model(small):
  params, arch = small
  ref = transformers.CLIPModel.from_pretrained(CKPT).eval()
  images = _normalised(np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8))
  ours = np.asarray(model.normalize(model.encode_image(params, images, arch)))
  with torch.no_grad():
    theirs = ref.get_image_features(pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2))
  theirs = getattr(theirs, "pooler_output", theirs).numpy()
  theirs = theirs / np.linalg.norm(theirs, axis=-1, keepdims=True)
  np.testing.assert_allclose(ours, theirs, atol=1e-4)  # fp32, 4 layers: see test_clip_parity


def test_zero_shot_accuracy_on_held_out_images(small):
  # metadata.json reports 84.5% on all 10,000; 300 images have a standard error of ~2 points.
  params, arch = small
  d = domains.load_domain("fashion_mnist:clean", num_images=300, seed=0, image_size=32)
  classifier = zeroshot.build_classifier(params, arch, d.class_names, ["a photo of a {}."])
  logits = zeroshot.zeroshot_logits(params, _normalised(d.images), classifier, arch)
  accuracy = float(np.mean(np.asarray(logits).argmax(-1) == d.labels))
  assert accuracy > 0.75, accuracy

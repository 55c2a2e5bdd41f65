"""Tests of metatpt_jax.pretrain: loss, batches, augmentation, CLI smoke test and resume."""
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metatpt_jax.clip import checkpoint, model
from metatpt_jax.clip.config import get_arch
from metatpt_jax.clip.tokenizer import Tokenizer
from metatpt_jax.pretrain import augment, captions, pairs, step, train
from tests.config_files import ROOT, config_module

CONFIG_PATH = os.path.join(ROOT, "configs", "pretrain_small.py")


def _get_config(arg=""):
  return config_module("pretrain_small").get_config(arg)


def test_paired_loss_is_clip_loss():
  logits = jax.random.normal(jax.random.key(0), (6, 6)) * 3
  labels = jnp.array([0, 1, 1, 2, 0, 3])
  loss, _ = step.contrastive_loss(logits, labels, labels, "paired")
  diag = jnp.arange(6)
  expected = (optax.softmax_cross_entropy_with_integer_labels(logits, diag).mean()
              + optax.softmax_cross_entropy_with_integer_labels(logits.T, diag).mean()) / 2
  np.testing.assert_allclose(loss, expected, rtol=1e-6)


@pytest.mark.parametrize("target", ["class_uniform", "class_any"])
def test_class_losses_prefer_class_matches_and_skip_absent_classes(target):
  labels = jnp.array([0, 0, 1])
  caption_labels = jnp.array([0, 0, 1, 1, 2])  # class 2 has no image in the batch
  right = 10.0 * (labels[:, None] == caption_labels[None, :])
  wrong = 10.0 * (labels[:, None] != caption_labels[None, :])
  loss_fn = lambda logits: step.contrastive_loss(logits, labels, caption_labels, target)
  (loss_right, accuracy), (loss_wrong, _) = loss_fn(right), loss_fn(wrong)
  assert float(accuracy) == 1.0 and np.isfinite(loss_right) and loss_right < loss_wrong
  grads = jax.grad(lambda logits: loss_fn(logits)[0])(right)
  assert np.all(np.isfinite(grads))  # the caption of the absent class must not poison them


def test_class_any_lets_confidence_grow():
  # Same-class scores that differ: the uniform target is hurt by a larger scale, the
  # multi-positive one is not (PILOT.md: train to confidence).
  labels = caption_labels = jnp.array([0, 0, 1, 1])
  cosines = jnp.array([[.9, .7, .1, .0], [.7, .9, .0, .1], [.1, .0, .9, .7], [.0, .1, .7, .9]])
  loss = lambda scale, target: step.contrastive_loss(scale * cosines, labels, caption_labels,
                                                     target)[0]
  assert loss(100.0, "class_any") < loss(10.0, "class_any")
  assert loss(100.0, "class_uniform") > loss(10.0, "class_uniform")


def test_augment_keeps_shape_and_range():
  image = jax.random.uniform(jax.random.key(0), (32, 32, 3))
  cfg = augment.default_config()
  out = jax.jit(lambda im, key: augment.augment_image(im, key, cfg))(image, jax.random.key(1))
  assert out.shape == image.shape and float(out.min()) >= 0 and float(out.max()) <= 1


def _tiny_pairs():
  tokenizer = Tokenizer()
  make = lambda names: captions.caption_table(names, captions.TEMPLATES, tokenizer, 77)
  return pairs.load_pairs(("animal_mnist",), (1.0,), 32, make, max_images_per_source=50)


def test_batches_are_deterministic_and_truncation_is_exact():
  data = _tiny_pairs()
  a, b = (pairs.sample_batch(data, seed=0, step=5, batch_size=8, captions_per_class=2)
          for _ in range(2))
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  assert sorted(set(a["caption_labels"].tolist())) == list(range(10))
  arch = get_arch("tiny")
  params = model.init_params(jax.random.key(0), arch)
  ids = a["token_ids"]
  full = np.zeros((len(ids), arch.text.context_length), np.int32)
  full[:, :ids.shape[1]] = ids
  np.testing.assert_allclose(model.encode_text(params, ids, arch),
                             model.encode_text(params, full, arch), atol=1e-5)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
  """The CLI on the tiny config, uninterrupted (4 steps)."""
  workdir = str(tmp_path_factory.mktemp("pretrain_tiny"))
  command = [sys.executable, "-m", "metatpt_jax.pretrain.cli",
             f"--config={CONFIG_PATH}:tiny", f"--config.workdir={workdir}",
             "--config.progress_bar=False"]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def test_cli_writes_a_loadable_checkpoint(cli_run):
  params, arch = checkpoint.load_clip(cli_run)
  assert arch == get_arch("tiny")
  with open(os.path.join(cli_run, "metadata.json")) as f:
    metadata = json.load(f)
  assert metadata["steps"] == 4 and metadata["finished"]
  assert "metatpt_jax.pretrain.cli" in metadata["command"]
  assert math.isfinite(metadata["final_metrics"]["loss"])
  assert set(metadata["zero_shot_test"]) == {"fashion_mnist", "animal_mnist"}
  assert 0 <= metadata["zero_shot_test"]["fashion_mnist"]["accuracy"] <= 100
  assert float(params["logit_scale"]) > 0


def test_resumed_run_matches_uninterrupted(cli_run, tmp_path):
  config = _get_config("tiny")
  config.workdir, config.progress_bar = str(tmp_path), False
  config.stop_at = 2
  assert train.run(config) == dict(steps=2, finished=False)
  assert not os.path.exists(os.path.join(tmp_path, "model.safetensors"))
  config.stop_at = 0
  assert train.run(config)["steps"] == 4
  resumed, _ = checkpoint.load_clip(tmp_path)
  uninterrupted, _ = checkpoint.load_clip(cli_run)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), resumed, uninterrupted)


def test_described_batches_caption_the_transformation_drawn():
  table = np.arange(3 * len(captions.DESCRIBED) * 4).reshape(3, len(captions.DESCRIBED), 4)
  data = pairs.PairData(np.zeros((6, 8, 8, 3), np.uint8), np.array([0, 1, 2, 0, 1, 2], np.int32),
                        np.full(6, 1 / 6), ["a", "b", "c"], table)
  probs = [0.28] + [0.09] * (len(captions.DESCRIBED) - 1)
  batch = pairs.sample_batch(data, 0, 3, 64, described_probs=probs)
  again = pairs.sample_batch(data, 0, 3, 64, described_probs=probs)
  np.testing.assert_array_equal(batch["ops"], again["ops"])  # a pure function of (seed, step)
  cls = batch["labels"] // len(captions.DESCRIBED)
  np.testing.assert_array_equal(batch["labels"] % len(captions.DESCRIBED), batch["ops"])
  np.testing.assert_array_equal(batch["token_ids"], table[cls, batch["ops"]])
  np.testing.assert_array_equal(batch["caption_labels"], batch["labels"])
  assert len(set(batch["ops"].tolist())) > 4  # many transformations are drawn


def test_each_described_transformation_changes_the_image():
  rng = np.random.default_rng(0)
  image = np.zeros((32, 32, 3), np.float32)
  image[8:24, 10:22] = rng.uniform(0.5, 1.0, (16, 12, 3))  # an object on black
  cfg = augment.default_config()
  cfg.crop_prob, cfg.rotation_deg, cfg.flip_prob = 0.0, 0.0, 0.0  # no geometric jitter
  fn = jax.jit(lambda im, k, op: augment.apply_described(im, k, op, cfg,
                                                         augment.described_config()))
  outs = [np.asarray(fn(jnp.asarray(image), jax.random.key(1), op))
          for op in range(len(captions.DESCRIBED))]
  np.testing.assert_allclose(outs[0], image, atol=1e-6)  # "none" leaves it as it is
  for name, out in zip(captions.DESCRIBED_NAMES[1:], outs[1:]):
    assert out.min() >= 0 and out.max() <= 1, name
    assert np.abs(out - image).mean() > 0.01, name
  np.testing.assert_allclose(outs[captions.DESCRIBED_NAMES.index("inverted")], 1 - image,
                             atol=1e-6)
  small = outs[captions.DESCRIBED_NAMES.index("small")]
  assert (small > 0.05).sum() < 0.7 * (image > 0.05).sum()  # the object shrinks, not streaks

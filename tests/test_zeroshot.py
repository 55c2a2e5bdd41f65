"""Zero-shot classifier construction and batched classification on the tiny architecture."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from metatpt_jax.clip import config, model, zeroshot
from tests.conftest import EOT, SOT

ARCH = config.get_arch("tiny")
# Same computation, different batching or grouping: fp32 reassociation only.
ATOL = 1e-5
# Jitted references: op-by-op dispatch of the towers would dominate the test time.
encode_text = jax.jit(model.encode_text, static_argnames="arch")
encode_image = jax.jit(model.encode_image, static_argnames="arch")


def fake_tokenizer(texts, context_length=77):
  """Deterministic stand-in for the BPE tokenizer: one id per character, [N, L] int32."""
  ids = np.zeros((len(texts), context_length), np.int32)
  for row, text in zip(ids, texts):
    body = [1 + (ord(c) * 7919) % (SOT - 1) for c in text][:context_length - 2]
    row[:len(body) + 2] = [SOT, *body, EOT]
  return ids


@pytest.fixture(scope="module")
def params():
  return jax.jit(model.init_params, static_argnames="arch")(jax.random.key(0), arch=ARCH)


@pytest.fixture(scope="module")
def images():
  size = ARCH.vision.image_size
  return np.random.default_rng(0).normal(size=(7, size, size, 3)).astype(np.float32)


def _text_embedding(params, texts):
  return np.asarray(model.normalize(encode_text(params, fake_tokenizer(texts), arch=ARCH)))


def test_single_template_classifier(params):
  classes = ["cat", "dog", "tabby cat"]
  classifier = np.asarray(zeroshot.build_classifier(
      params, ARCH, classes, ["a photo of a {}."], tokenizer=fake_tokenizer))
  assert classifier.shape == (3, ARCH.embed_dim) and classifier.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(classifier, axis=-1), 1.0, atol=1e-6)
  expected = _text_embedding(params, [f"a photo of a {c}." for c in classes])
  np.testing.assert_allclose(classifier, expected, atol=ATOL)


def test_template_ensemble_averages_unit_embeddings(params):
  classes, templates = ["cat", "dog"], ["a photo of a {}.", "a drawing of a {}.", "{}"]
  classifier = np.asarray(zeroshot.build_classifier(params, ARCH, classes, templates,
                                                    tokenizer=fake_tokenizer, batch_size=4))
  per_template = np.stack([_text_embedding(params, [t.format(c) for t in templates])
                           for c in classes])  # [C, T, E]
  mean = per_template.mean(axis=1)
  expected = mean / np.linalg.norm(mean, axis=-1, keepdims=True)
  np.testing.assert_allclose(classifier, expected, atol=ATOL)
  # The ensemble is not just one of its members.
  assert np.abs(classifier - per_template[:, 0]).max() > 1e-3


def test_default_tokenizer(params):
  from metatpt_jax.clip import tokenizer  # the real BPE tokenizer, written alongside this
  classifier = zeroshot.build_classifier(params, ARCH, ["goldfish", "tabby cat"])
  ids = tokenizer.tokenize(["a photo of a goldfish.", "a photo of a tabby cat."])
  expected = model.normalize(encode_text(params, ids, arch=ARCH))
  np.testing.assert_allclose(classifier, expected, atol=ATOL)


def test_classify_batched_equals_unbatched(params, images):
  classifier = zeroshot.build_classifier(params, ARCH, ["a", "b", "c"], tokenizer=fake_tokenizer)
  full = np.asarray(zeroshot.zeroshot_logits(params, images, classifier, ARCH))
  assert full.shape == (7, 3)
  for batch_size in (1, 3, 7, 16):  # 16 > N: one padded batch
    np.testing.assert_allclose(zeroshot.classify(params, ARCH, images, classifier, batch_size),
                               full, atol=ATOL * 100)  # logits are ~100 x cosines
  assert zeroshot.classify(params, ARCH, images[:0], classifier).shape == (0, 3)


def test_classify_does_not_recompile(params, images):
  classifier = zeroshot.build_classifier(params, ARCH, ["a", "b"], tokenizer=fake_tokenizer)
  zeroshot.classify(params, ARCH, images[:5], classifier, batch_size=4)
  compiled = zeroshot.zeroshot_logits._cache_size()
  zeroshot.classify(params, ARCH, images, classifier, batch_size=4)  # other N, same batches
  zeroshot.classify(params, ARCH, images[:1], classifier, batch_size=4)
  assert zeroshot.zeroshot_logits._cache_size() == compiled


def test_build_classifier_does_not_recompile(params):
  zeroshot.build_classifier(params, ARCH, ["a", "b", "c"], tokenizer=fake_tokenizer,
                            batch_size=8)
  compiled = zeroshot._text_features._cache_size()
  zeroshot.build_classifier(params, ARCH, ["d", "e", "f", "g", "h"], ["{}", "a {}"],
                            tokenizer=fake_tokenizer, batch_size=8)
  assert zeroshot._text_features._cache_size() == compiled


def test_planted_classifier_recovers_images(params, images):
  """A classifier made of the images' own embeddings must classify each image as itself."""
  classifier = model.normalize(encode_image(params, images, arch=ARCH))
  logits = zeroshot.classify(params, ARCH, images, classifier, batch_size=3)
  np.testing.assert_array_equal(logits.argmax(-1), np.arange(len(images)))


@pytest.mark.parametrize("class_names, templates, message", [
    ([], ["{}"], "non-empty"),
    ("cat", ["{}"], "non-empty sequence"),
    (["cat"], [], "templates is empty"),
    (["cat"], ["a photo of a {}.", "a photo"], "needs a '{}'.*'a photo'"),
])
def test_build_classifier_errors(params, class_names, templates, message):
  with pytest.raises(ValueError, match=message):
    zeroshot.build_classifier(params, ARCH, class_names, templates, tokenizer=fake_tokenizer)


@pytest.mark.parametrize("shape, dtype, message", [
    ((32, 32, 3), np.float32, "shape \\(32, 32, 3\\); expected \\[N, 32, 32, 3\\] float32"),
    ((2, 224, 224, 3), np.float32, "expected \\[N, 32, 32, 3\\].*image_size = 32"),
    ((2, 32, 32, 1), np.float32, "expected \\[N, 32, 32, 3\\]"),
    ((2, 32, 32, 3), np.uint8, "dtype uint8.*preprocess"),
])
def test_image_errors(params, shape, dtype, message):
  classifier = np.eye(2, ARCH.embed_dim, dtype=np.float32)
  bad = np.zeros(shape, dtype)
  with pytest.raises(ValueError, match=message):
    zeroshot.classify(params, ARCH, bad, classifier)
  with pytest.raises(ValueError, match=message):
    zeroshot.zeroshot_logits(params, bad, classifier, ARCH)


def test_classifier_and_batch_size_errors(params, images):
  with pytest.raises(ValueError, match="classifier has shape \\(2, 5\\); expected \\[C, 32\\]"):
    zeroshot.classify(params, ARCH, images, np.zeros((2, 5), np.float32))
  with pytest.raises(ValueError, match="batch_size must be positive"):
    zeroshot.classify(params, ARCH, images, np.eye(2, ARCH.embed_dim), batch_size=0)

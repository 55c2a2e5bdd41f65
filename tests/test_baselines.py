"""ZERO, MTA and C-TPT against independent transcriptions of the authors' algorithms.

ZERO and MTA: NumPy loops written from the public code (FarinaMatteo/zero `ttas/zero.py`,
MaxZanella/MTA `mta.py`), fed the same view logits / features as ours, so only the algorithm is
compared. C-TPT: the PyTorch TPT reference (`bench.torch_tpt`, transformers' CLIP) with C-TPT's
dispersion term, on the same views and weights.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from metatpt_jax import ctpt, tpt, training_free, views
from metatpt_jax.bench.torch_tpt import TorchTPT
from metatpt_jax.clip import checkpoint
from metatpt_jax.clip.tokenizer import default_tokenizer
from metatpt_jax.frozen_clip import class_features, encode_images, logits
from tests import method_helpers as h


# ------------------------------------------------------------------ ZERO
def _np_entropy(x):
  p = np.exp(x - x.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  return -(p * np.log(np.maximum(p, 1e-30))).sum(1)


def _np_zero(view_logits, k):
  """ZERO's vote with its greedy tie-break, as a NumPy loop."""
  order = np.argsort(_np_entropy(view_logits), kind="stable")
  classes = view_logits[order].argmax(1)
  votes = np.bincount(classes[:k], minlength=view_logits.shape[1]).astype(float)
  tied = np.flatnonzero(votes == votes.max())
  if len(tied) > 1:
    for c in classes[k:]:
      if c in tied:
        votes[c] += 1
        break
  return votes


def test_zero_votes_match_the_transcription_with_and_without_ties():
  rng = np.random.default_rng(0)
  ties = 0
  for trial in range(200):
    num_classes = 3 if trial % 2 else 5  # few classes: ties are common
    view_logits = rng.normal(size=(16, num_classes)).astype(np.float32) * 3
    want = _np_zero(view_logits, 5)
    got = np.asarray(training_free.zero_votes(jnp.asarray(view_logits), 5))
    np.testing.assert_array_equal(got, want)
    top = np.bincount(view_logits[np.argsort(_np_entropy(view_logits))[:5]].argmax(1),
                      minlength=num_classes)
    ties += (top == top.max()).sum() > 1
  assert ties > 20, ties  # the tie-break path was exercised


def _np_zero_soft(cosine, k, temperature):
  """The authors' `zero` (FarinaMatteo/zero ttas/zero.py) on unscaled logits (cosines): the k
  most confident views' softmax(cosine / eps) summed, eps their dtype's machine epsilon."""
  order = np.argsort(_np_entropy(cosine * 100), kind="stable")
  kept = cosine[order[:k]] / temperature
  p = np.exp(kept - kept.max(1, keepdims=True))
  p_bar = (p / p.sum(1, keepdims=True)).sum(0)
  tied = np.flatnonzero(p_bar == p_bar.max())
  if len(tied) > 1:
    for c in cosine[order[k:]].argmax(1):
      if c in tied:
        p_bar[c] += 1
        break
  return p_bar


def test_zero_at_fp16_temperature_is_the_authors_soft_vote():
  """Under the authors' fp16 autocast, "zero temperature" is 2**-10: views whose top two classes
  are within about 0.01 in cosine split their vote. Temperature 0 is the hard (fp32) vote."""
  rng = np.random.default_rng(1)
  eps16 = float(np.finfo(np.float16).eps)
  soft_seen = 0
  for _ in range(50):
    cosine = (0.3 + 0.004 * rng.normal(size=(16, 5))).astype(np.float32)
    logits = 100.0 * cosine
    want = _np_zero_soft(cosine, 5, eps16)
    got = np.asarray(training_free.zero_votes(jnp.asarray(logits), 5, eps16, 100.0))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    soft_seen += np.any((want > 1e-3) & (np.abs(want - np.round(want)) > 1e-3))
    hard = np.asarray(training_free.zero_votes(jnp.asarray(logits), 5))
    np.testing.assert_array_equal(hard, _np_zero(logits, 5))
  assert soft_seen > 10, soft_seen  # the soft path differs from a count of argmaxes


def _ours_and_inputs(fn, spec, seed):
  """fn's output on a tiny CLIP, and the same 16 views' features, text features and logits."""
  frozen, mspec = h.tiny_frozen(logit_scale=np.log(30.0))
  image, key = h.random_images(seed, 1)[0], jax.random.key(seed + 1)
  out, _ = jax.jit(fn, static_argnums=(3, 4))(frozen, image, key, spec, mspec)
  feats = encode_images(frozen, views.tpt_views(image, key, 16), mspec)
  text = class_features(frozen, frozen.ctx_init, mspec)
  return out, (frozen, feats, text, logits(frozen, feats, text))


def test_zero_one_sample_predicts_the_vote():
  spec = training_free.ZeroSpec(n_views=16)
  out, (_, _, _, view_logits) = _ours_and_inputs(training_free.zero_one_sample, spec, 2)
  view_logits = np.asarray(view_logits)
  votes = _np_zero(view_logits, spec.num_keep)
  assert int(np.argmax(out)) == int(np.argmax(votes))
  np.testing.assert_allclose(np.exp(np.asarray(out)), votes / votes.sum(), atol=1e-6)


# ------------------------------------------------------------------ MTA
def _np_mta(x, probs, lq=4.0, ly=0.2, outer=5, inner=5, tol=1e-6, frac=0.3):
  """MTA's mean shift with inlierness scores, as NumPy loops (float64)."""
  x, probs = x.astype(np.float64), probs.astype(np.float64)
  n = len(x)
  d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
  k = int(frac * (n - 1))
  h2 = np.array([0.5 * np.sort(np.delete(d2[j], j))[:k].mean() for j in range(n)])
  a = probs @ probs.T
  y, m = np.full(n, 1 / n), x[0].copy()
  for _ in range(outer):
    kern = np.exp(-((x - m) ** 2).sum(-1) / (2 * h2))
    for _ in range(inner):
      z = (kern + lq * a @ y) / ly
      new = np.exp(z - z.max())
      new /= new.sum()
      moved, y = np.linalg.norm(new - y), new
      if moved < tol:
        break
    for _ in range(inner):
      w = y * np.exp(-((x - m) ** 2).sum(-1) / (2 * h2))
      new = w @ x / w.sum()
      new /= np.linalg.norm(new)
      moved, m = np.linalg.norm(new - m), new
      if moved < tol:
        break
  return m, y


def test_mta_mode_matches_the_transcription():
  rng = np.random.default_rng(1)
  for _ in range(5):
    x = rng.normal(size=(24, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[1:12] = x[1:12] + 0.6 * x[0]  # a cluster around view 0 and scattered outliers
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    probs = jax.nn.softmax(jnp.asarray(rng.normal(size=(24, 5)) * 2), axis=-1)
    want_m, want_y = _np_mta(x, np.asarray(probs))
    with jax.enable_x64(True):
      m, y = training_free.mta_mode(jnp.asarray(x), jnp.asarray(probs, jnp.float64),
                                    training_free.MTASpec(n_views=24))
    np.testing.assert_allclose(np.asarray(m), want_m, atol=1e-9)
    np.testing.assert_allclose(np.asarray(y), want_y, atol=1e-9)
    assert np.abs(want_m - x[0]).max() > 1e-3  # the mode moved off view 0


def test_mta_one_sample_predicts_from_the_mode():
  spec = training_free.MTASpec(n_views=16)
  out, (frozen, feats, text, view_logits) = _ours_and_inputs(training_free.mta_one_sample, spec,
                                                             4)
  probs = np.asarray(jax.nn.softmax(view_logits, axis=-1))
  mode, _ = _np_mta(np.asarray(feats), probs)
  want = np.asarray(logits(frozen, jnp.asarray(mode[None], jnp.float32), text))[0]
  np.testing.assert_allclose(np.asarray(out), want, atol=1e-4)
  assert int(np.argmax(out)) == int(np.argmax(want))


# ------------------------------------------------------------------ C-TPT
@pytest.fixture(scope="module")
def torch_setup(tmp_path_factory):
  frozen, mspec = h.tiny_frozen(seed=0, logit_scale=np.log(10.0))  # as the TPT parity test
  directory = checkpoint.save_hf(frozen.params, mspec.arch, tmp_path_factory.mktemp("ctpt_hf"))
  model = transformers.CLIPModel.from_pretrained(directory, attn_implementation="eager").eval()
  texts = [f"X X X X {name}." for name in h.CLASS_NAMES]
  token_ids = np.asarray(default_tokenizer()(texts, context_length=mspec.arch.text.context_length))
  image, key = h.random_images(7, 1)[0], jax.random.key(11)
  pixels = np.asarray(jax.jit(views.tpt_views, static_argnums=2)(image, key, 64))
  return frozen, mspec, model, token_ids, image, key, pixels


@functools.partial(jax.jit, static_argnames=("spec", "mspec"))
def _ours(frozen, image, key, spec, mspec):
  return tpt.tpt_adapt_one_sample(frozen, image, key, spec, mspec)


def test_ctpt_matches_torch(torch_setup):
  """Two AdamW steps with eps 10 (gradients ~1): the step is ~ lr * g / 10, so the context, and
  with it the final logits, follow the gradient's values, dispersion term included."""
  frozen, mspec, model, token_ids, image, key, pixels = torch_setup
  spec = ctpt.CTPTSpec(steps=2, eps=10.0, lr=0.5, dispersion_weight=50.0)
  ref = TorchTPT(model, token_ids, frozen.ctx_init).adapt(pixels, steps=2, lr=0.5, eps=10.0,
                                                         dispersion_weight=50.0)
  final, metrics = _ours(frozen, image, key, spec, mspec)
  assert set(np.asarray(metrics["selected"]).tolist()) == set(ref["selected"].tolist())
  assert abs(float(metrics["loss"]) - ref["loss"]) < 2e-5
  np.testing.assert_allclose(np.asarray(final), ref["logits"], atol=2e-4)
  # Without the dispersion term the reference lands elsewhere: the term is in the gradient.
  plain = TorchTPT(model, token_ids, frozen.ctx_init).adapt(pixels, steps=2, lr=0.5, eps=10.0)
  assert np.abs(plain["logits"] - ref["logits"]).max() > 10 * 2e-4


def test_dispersion_is_the_mean_distance_to_the_centroid():
  frozen, mspec = h.tiny_frozen(logit_scale=np.log(10.0))
  text = np.asarray(class_features(frozen, frozen.ctx_init, mspec), np.float64)
  want = np.mean([np.linalg.norm(t - text.mean(0)) for t in text])
  np.testing.assert_allclose(float(ctpt.text_feature_dispersion(jnp.asarray(text))), want,
                             rtol=1e-6)

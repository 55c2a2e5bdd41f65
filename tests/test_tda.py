"""TDA against a NumPy transcription of the authors' caches (kdiAAA/TDA `tda_runner.py`), its
order semantics, and a stream cut in two (cache saved and loaded) giving the uninterrupted
stream's numbers."""
import math

import jax
import jax.numpy as jnp
import numpy as np

from metatpt_jax import tda
from tests import method_helpers as h

SPEC = tda.TDASpec()


def _np_tda(features, clip_logits, spec=SPEC, prob_maps=None):
  """The authors' loop: per-class lists sorted by entropy, capped at the shot capacity;
  prob_maps: per sample, the probabilities its entropy and negative mask come from (the mean
  softmax of its confident views), else the softmax of its logits."""
  pos, neg, out = {}, {}, []

  def update(cache, pred, item, shots):
    items = cache.setdefault(pred, [])
    if len(items) < shots:
      items.append(item)
    elif item[1] < items[-1][1]:
      items[-1] = item
    items.sort(key=lambda it: it[1])

  num_classes = clip_logits.shape[1]
  for i, (f, lg) in enumerate(zip(features.astype(np.float64), clip_logits.astype(np.float64))):
    p = np.exp(lg - lg.max())
    p /= p.sum()
    if prob_maps is not None:
      p = prob_maps[i].astype(np.float64)
    h_ = -(p * np.log(p + 1e-12)).sum()
    pred = int(lg.argmax())
    update(pos, pred, (f, h_, None), spec.pos_shot)
    if spec.neg_entropy_band[0] < h_ / math.log2(num_classes) < spec.neg_entropy_band[1]:
      mask = ((p > spec.neg_mask_band[0]) & (p < spec.neg_mask_band[1])).astype(float)
      update(neg, pred, (f, h_, mask), spec.neg_shot)
    final = lg.copy()
    for c, items in pos.items():
      for k, _, _ in items:
        final[c] += spec.pos_alpha * np.exp(-spec.pos_beta * (1 - f @ k))
    for items in neg.values():
      for k, _, mask in items:
        final -= spec.neg_alpha * np.exp(-spec.neg_beta * (1 - f @ k)) * mask
    out.append(final)
  return np.array(out)


def _stream(n=60, num_classes=4, dim=8, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(num_classes, dim))
  labels = rng.integers(0, num_classes, n)
  feats = centres[labels] + 0.8 * rng.normal(size=(n, dim))
  feats /= np.linalg.norm(feats, axis=1, keepdims=True)
  # Class text features off their image clusters: CLIP errs, and the caches have work to do.
  text = centres + 0.8 * rng.normal(size=centres.shape)
  text /= np.linalg.norm(text, axis=1, keepdims=True)
  return feats.astype(np.float32), (3.0 * feats @ text.T).astype(np.float32)


def _ours(feats, clip_logits, cache=None):
  if cache is None:
    cache = tda.init_cache(clip_logits.shape[1], feats.shape[1], SPEC)
  step = lambda c, x: tda.tda_update_and_predict(c, x[0], x[1], SPEC)
  return jax.lax.scan(step, cache, (jnp.asarray(feats), jnp.asarray(clip_logits)))


def test_tda_matches_the_transcription():
  feats, clip_logits = _stream()
  want = _np_tda(feats, clip_logits)
  cache, got = jax.jit(_ours)(feats, clip_logits)
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)
  assert (np.asarray(got).argmax(1) == want.argmax(1)).all()
  # Both caches were used: full positive slots, some negative entries, and changed predictions.
  assert np.isfinite(np.asarray(cache.pos_entropy)).all()
  assert np.isfinite(np.asarray(cache.neg_entropy)).any()
  assert (want.argmax(1) != clip_logits.argmax(1)).any()
  assert int(cache.seen) == len(feats)


def test_tda_depends_on_the_stream_order_and_only_on_it():
  feats, clip_logits = _stream(seed=1)
  _, a = _ours(feats, clip_logits)
  _, b = _ours(feats, clip_logits)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # deterministic
  perm = np.random.default_rng(2).permutation(len(feats))
  _, c = _ours(feats[perm], clip_logits[perm])
  assert not np.allclose(np.asarray(c), np.asarray(a)[perm], atol=1e-6)  # the order matters


def test_a_stream_cut_and_resumed_from_its_saved_cache_gives_the_same_numbers(tmp_path):
  feats, clip_logits = _stream(seed=3)
  _, whole = _ours(feats, clip_logits)
  cache, first = _ours(feats[:25], clip_logits[:25])
  path = tmp_path / "cache.npz"
  np.savez(path, **cache._asdict())
  with np.load(path) as saved:
    restored = tda.Cache(**{k: jnp.asarray(saved[k]) for k in tda.Cache._fields})
  _, second = _ours(feats[25:], clip_logits[25:], restored)
  np.testing.assert_array_equal(np.concatenate([first, second]), np.asarray(whole))


def _np_confident_views(feats, view_logits, keep_fraction=0.1):
  """The authors' `get_clip_logits` with views: the 10 % lowest-entropy views; their mean
  feature and logits, the entropy of their mean probability (`avg_entropy`) and that mean
  probability as the negative cache's map."""
  logp = view_logits - np.log(np.exp(view_logits).sum(1, keepdims=True))
  entropy = -(np.exp(logp) * logp).sum(1)
  chosen = np.argsort(entropy, kind="stable")[:int(len(entropy) * keep_fraction)]
  out = view_logits[chosen]
  prob_map = np.exp(logp[chosen]).mean(0)
  return feats[chosen].mean(0), out.mean(0), prob_map, -(prob_map * np.log(prob_map)).sum()


def test_tda_with_views_matches_the_transcription():
  """On ImageNet's variants the authors keep 6 of 64 views: the mean feature and logits of the
  kept views, and the entropy and negative mask from their mean softmax (not from the softmax
  of the mean logits)."""
  rng = np.random.default_rng(4)
  feats, clip_logits = _stream(n=40, seed=4)
  per_view_f, per_view_l = [], []
  for f, lg in zip(feats, clip_logits):
    per_view_f.append(f + 0.3 * rng.normal(size=(64, f.size)).astype(np.float32))
    per_view_l.append(lg + 2.0 * rng.normal(size=(64, lg.size)).astype(np.float32))
  want_views = [_np_confident_views(f, lg) for f, lg in zip(per_view_f, per_view_l)]
  got_views = [tda.confident_views(jnp.asarray(f), jnp.asarray(lg), 6)
               for f, lg in zip(per_view_f, per_view_l)]
  for (wf, wl, wp, _), (gf, gl, gp) in zip(want_views, got_views):
    np.testing.assert_allclose(np.asarray(gf), wf, atol=1e-6)
    np.testing.assert_allclose(np.asarray(gl), wl, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gp), wp, atol=1e-6)
  f, lg, p = (np.stack([np.asarray(v[k]) for v in got_views]) for k in range(3))
  want = _np_tda(f, lg, prob_maps=p)
  step = lambda c, x: tda.tda_update_and_predict(c, x[0], x[1], SPEC, x[2])
  _, got = jax.lax.scan(step, tda.init_cache(lg.shape[1], f.shape[1], SPEC),
                        (jnp.asarray(f), jnp.asarray(lg), jnp.asarray(p)))
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)
  # the mean softmax is not the softmax of the mean logits: the distinction is exercised
  soft = np.exp(lg - lg.max(1, keepdims=True))
  soft /= soft.sum(1, keepdims=True)
  assert np.abs(soft - p).max() > 1e-2


def test_tda_template_classifier_is_the_ensemble_and_keeps_old_fingerprints():
  from metatpt_jax.bench import fingerprint
  from metatpt_jax.clip import zeroshot
  frozen, mspec = h.tiny_frozen(logit_scale=np.log(30.0))
  templates = ("a photo of a {}.", "art of the {}.")
  spec = SPEC.replace(templates=templates)
  state = tda.initial_state(frozen.params, mspec.arch, h.CLASS_NAMES, spec)
  want = zeroshot.build_classifier(frozen.params, mspec.arch, h.CLASS_NAMES, templates)
  np.testing.assert_allclose(np.asarray(state.text), np.asarray(want), atol=1e-6)
  assert tda.initial_state(frozen.params, mspec.arch, h.CLASS_NAMES, SPEC).text is None
  images, keys = h.random_images(0, 4), jax.random.split(jax.random.key(0), 4)
  _, with_templates, _ = tda.tda_stream(frozen, state, images, keys, spec, mspec)
  plain = tda.initial_state(frozen.params, mspec.arch, h.CLASS_NAMES, SPEC)
  _, without, _ = tda.tda_stream(frozen, plain, images, keys, SPEC, mspec)
  assert np.abs(np.asarray(with_templates) - np.asarray(without)).max() > 1e-4
  # records made before the field existed keep their fingerprints; templates make new ones
  assert "templates" not in fingerprint.result_fields(SPEC)
  assert fingerprint.result_fields(spec)["templates"] == list(templates) or \
      tuple(fingerprint.result_fields(spec)["templates"]) == templates


def test_tda_stream_on_a_tiny_clip_uses_the_images_and_views():
  frozen, mspec = h.tiny_frozen(logit_scale=np.log(30.0))
  images = h.random_images(0, 6)
  keys = jax.random.split(jax.random.key(0), 6)
  for spec in (SPEC, SPEC.replace(n_views=8, selection_ratio=0.25, view_kind="random_crop")):
    state = tda.TDAState(tda.init_cache(len(h.CLASS_NAMES), mspec.arch.embed_dim, spec), None)
    state, final, metrics = jax.jit(tda.tda_stream, static_argnums=(4, 5))(
        frozen, state, images, keys, spec, mspec)
    clip_logits = metrics["zero_shot_logits"]
    assert final.shape == (6, len(h.CLASS_NAMES)) and int(state.cache.seen) == 6
    assert np.isfinite(np.asarray(final)).all()
    assert np.abs(np.asarray(final) - np.asarray(clip_logits)).max() > 1e-3

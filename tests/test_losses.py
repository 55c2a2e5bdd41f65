"""Known values of the test-time objectives in `metatpt_jax.losses`, eager and jitted.

Expected numbers come from hand arithmetic or float64 NumPy on written-out probabilities, never
from the functions under test.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metatpt_jax import losses, metatpt
from metatpt_jax.errors import UserError

# float32 on O(1) values: measured errors are <= 3e-7; 1e-6 is far below any effect checked.
TOL = dict(rtol=1e-6, atol=1e-6)
# Most inputs share one shape [V, C] = [6, 5], so eager ops reuse their compiled kernels.
V, C = 6, 5
# A view peaked by a logit gap of 30 over C=5 classes has entropy (C-1) * e^-30 * 31 = 1.2e-11
# in exact arithmetic; a uniform view has log 5 = 1.6.
PEAKED_ATOL = 1e-6

JIT = pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])


def _call(fn, *args, jit, static_argnums=()):
  """fn(*args) as a NumPy array, through jax.jit when `jit`."""
  return np.asarray((jax.jit(fn, static_argnums=static_argnums) if jit else fn)(*args))


def _entropy(p):
  """Entropy of a probability vector in float64, with 0 log 0 = 0."""
  p = np.asarray(p, np.float64)
  p = p[p > 0]
  return -np.sum(p * np.log(p))


def _kl_from_view_0(logits):
  """Mean over views 1.. of KL(p_0 || p_v), in float64 NumPy."""
  x = np.asarray(logits, np.float64)
  logp = x - x.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  return np.mean(np.sum(np.exp(logp[0]) * (logp[0] - logp[1:]), axis=-1))


def _view_kl(logits):
  """The library's "view_kl" inner objective on logits alone (the function under test)."""
  return losses.INNER_OBJECTIVES["view_kl"].views_term(logits, None)


def _random_logits(seed, shape, scale=2.0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, jnp.float32)


@JIT
def test_uniform_logits_give_log_c(jit):
  # Every row constant (a different constant per row: softmax ignores a shift): p = 1/5.
  logits = jnp.arange(float(V))[:, None] * jnp.ones((V, C))
  np.testing.assert_allclose(_call(losses.view_entropy, logits, jit=jit), [np.log(5)] * V, **TOL)
  np.testing.assert_allclose(_call(losses.marginal_entropy, logits, jit=jit), np.log(5), **TOL)
  np.testing.assert_allclose(_call(losses.marginal_log_probs, logits, jit=jit),
                             [-np.log(5)] * 5, **TOL)


@JIT
def test_peaked_prediction_has_near_zero_entropy(jit):
  same = 30.0 * jax.nn.one_hot(jnp.full(V, 2), C)          # all views sure of class 2
  spread = 30.0 * jax.nn.one_hot(jnp.arange(V) % 3, C)     # 2 views sure of each of classes 0-2
  assert np.all(_call(losses.view_entropy, same, jit=jit) < PEAKED_ATOL)
  assert _call(losses.marginal_entropy, same, jit=jit) < PEAKED_ATOL
  # Sure views that disagree: the marginal is uniform over 3 classes, entropy log 3.
  np.testing.assert_allclose(_call(losses.marginal_entropy, spread, jit=jit), np.log(3), **TOL)


@JIT
def test_identical_views_have_zero_divergence(jit):
  logits = jnp.tile(jnp.array([0.3, -1.2, 2.0, 0.7, -0.4]), (V, 1))
  for fn in (losses.kl_to_mean, _view_kl):
    np.testing.assert_allclose(_call(fn, logits, jit=jit), 0.0, atol=1e-6)
    # Control: different views give a divergence well above the tolerance.
    assert _call(fn, _random_logits(0, (V, C)), jit=jit) > 1e-2


@JIT
def test_two_class_hand_example(jit):
  # View 0: logits (log 3, 0) -> p = (3/4, 1/4); view 1: (0, 0) -> p = (1/2, 1/2).
  logits = jnp.array([[np.log(3.0), 0.0], [0.0, 0.0]])
  p0, p1 = np.array([0.75, 0.25]), np.array([0.5, 0.5])
  mean = (p0 + p1) / 2                                     # (5/8, 3/8)
  marginal = -(0.625 * np.log(0.625) + 0.375 * np.log(0.375))         # 0.661563
  kl_mean = (np.sum(p0 * np.log(p0 / mean)) + np.sum(p1 * np.log(p1 / mean))) / 2  # 0.033822
  kl_ref = 0.75 * np.log(0.75 / 0.5) + 0.25 * np.log(0.25 / 0.5)      # 0.130812
  np.testing.assert_allclose(_call(losses.marginal_entropy, logits, jit=jit), marginal, **TOL)
  np.testing.assert_allclose(_call(losses.kl_to_mean, logits, jit=jit), kl_mean, **TOL)
  np.testing.assert_allclose(_call(_view_kl, logits, jit=jit), kl_ref, **TOL)


@JIT
def test_marginal_entropy_and_consistency(jit):
  logits = _random_logits(1, (V, C))
  marginal = _call(losses.marginal_entropy, logits, jit=jit)
  kl = _call(losses.kl_to_mean, logits, jit=jit)
  assert kl > 1e-2  # so that the weight matters below
  for weight, expected in ((0.0, marginal), (2.5, marginal + 2.5 * kl)):
    np.testing.assert_allclose(_call(losses.marginal_entropy_and_consistency, logits, weight,
                                     jit=jit),
                               expected, **TOL)


# View v has logits scale_v * (1, 0, 0, 0, 0): the larger the scale, the lower the entropy.
SCALES = np.array([0.5, 5.0, 1.0, 8.0, 2.0, 3.0])
CONFIDENT = [3, 1, 5]  # the three largest scales, most confident first


def _scaled_views():
  return jnp.asarray(SCALES[:, None] * np.eye(C)[0], jnp.float32)


@JIT
def test_select_confident_picks_lowest_entropy_views(jit):
  logits = _scaled_views()
  idx = _call(losses.select_confident, logits, 3, jit=jit, static_argnums=1)
  np.testing.assert_array_equal(idx, CONFIDENT)


@JIT
def test_selection_passes_gradient_only_through_kept_values(jit):
  logits = _scaled_views() + _random_logits(2, (V, C), scale=0.1)

  def through_selection(x):
    return jnp.sum(losses.view_entropy(x[losses.select_confident(x, 3)]))

  def fixed_rows(x):
    return jnp.sum(losses.view_entropy(x[jnp.array(CONFIDENT)]))

  grad = _call(jax.grad(through_selection), logits, jit=jit)
  np.testing.assert_allclose(grad, _call(jax.grad(fixed_rows), logits, jit=jit), **TOL)
  dropped = np.setdiff1d(np.arange(V), CONFIDENT)
  np.testing.assert_array_equal(grad[dropped], 0.0)
  assert np.all(np.abs(grad[CONFIDENT]).sum(-1) > 1e-4)


@JIT
def test_marginal_log_probs_matches_naive(jit):
  logits = _random_logits(3, (V, C), scale=4.0)
  x = np.asarray(logits, np.float64)
  softmax = np.exp(x - x.max(-1, keepdims=True))
  softmax /= softmax.sum(-1, keepdims=True)
  np.testing.assert_allclose(_call(losses.marginal_log_probs, logits, jit=jit),
                             np.log(softmax.mean(0)), **TOL)


@JIT
def test_cosine_distance_per_view(jit):
  ref = jnp.array([1.0, 2.0, 3.0])
  # parallel, orthogonal (-3 + 0 + 3 = 0), antiparallel
  feats = jnp.array([[2.0, 4.0, 6.0], [-3.0, 0.0, 1.0], [-1.0, -2.0, -3.0]])
  dist = _call(losses.cosine_distance_per_view, feats, ref, jit=jit)
  np.testing.assert_allclose(dist, [0.0, 1.0, 2.0], **TOL)
  feats, ref = _random_logits(4, (5, 8)), _random_logits(5, (8,))
  scales = jnp.array([1e-3, 1.0, 7.0, 1e3, 0.5])[:, None]
  np.testing.assert_allclose(
      _call(losses.cosine_distance_per_view, feats * scales, 40.0 * ref, jit=jit),
      _call(losses.cosine_distance_per_view, feats, ref, jit=jit), **TOL)


def _logits_and_features():
  return _random_logits(6, (V, C)), _random_logits(7, (V, 16))


PER_VIEW = sorted(k for k, o in losses.INNER_OBJECTIVES.items() if o.is_per_view)


@JIT
@pytest.mark.parametrize("name", PER_VIEW)
def test_per_view_terms_average_to_the_objective(name, jit):
  objective = losses.INNER_OBJECTIVES[name]
  logits, feats = _logits_and_features()
  per_view = _call(objective.per_view, logits[1:], feats[1:], logits[0], feats[0], jit=jit)
  whole = _call(objective.views_term, logits, feats, jit=jit)
  assert per_view.shape == (V - 1,)
  np.testing.assert_allclose(per_view.mean(), whole, **TOL)
  # As the chunked inner gradient sums it: chunks of 2 views (the last of 1), over V - 1 = 5.
  chunks = [
      _call(objective.per_view, logits[s:s + 2], feats[s:s + 2], logits[0], feats[0],
            jit=jit).sum() for s in range(1, V, 2)]
  np.testing.assert_allclose(np.sum(chunks) / (V - 1), whole, **TOL)


def _consensus_of_confident(logits):
  """NumPy: the mean KL to their mean of the max(2, 10 %) lowest-entropy views."""
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  entropy = -(p * np.log(p)).sum(-1)
  kept = p[np.argsort(entropy)[:max(2, int(0.1 * len(p)))]]
  mean = kept.mean(0)
  return np.mean((kept * (np.log(kept) - np.log(mean))).sum(-1))


def test_inner_objectives_have_their_named_values():
  logits, feats = _logits_and_features()
  cosine = np.asarray(feats) / np.linalg.norm(np.asarray(feats), axis=-1, keepdims=True)
  expected = {
      "view_kl": _kl_from_view_0(logits),
      "embedding_agreement": np.mean(1.0 - cosine[1:] @ cosine[0]),
      "confident_agreement": (jnp.mean(losses.view_entropy(logits[1:]))
                              + _kl_from_view_0(logits)),
      "marginal_entropy": losses.marginal_entropy(logits),
      "confident_consensus": _consensus_of_confident(np.asarray(logits[1:])),
      "feature_consensus": np.mean(1.0 - cosine[1:] @ (cosine[1:].mean(0) / np.linalg.norm(
          cosine[1:].mean(0)))),
  }
  assert set(expected) == set(losses.INNER_OBJECTIVES)
  for name, value in expected.items():
    objective = losses.INNER_OBJECTIVES[name]
    np.testing.assert_allclose(objective.views_term(logits, feats), value, **TOL)
    # The generator penalty enters with the objective's weight, in one place.
    weighted = dataclasses.replace(objective, penalty_weight=2.5)
    np.testing.assert_allclose(weighted.loss(logits, feats, 0.4), value + 1.0, **TOL)
  # Objectives that do not read the prompt need no logits; those that read only logits no
  # features.
  no_prompt = losses.INNER_OBJECTIVES["embedding_agreement"]
  assert not no_prompt.reads_prompt
  np.testing.assert_allclose(no_prompt.views_term(None, feats), expected["embedding_agreement"],
                             **TOL)
  np.testing.assert_allclose(losses.INNER_OBJECTIVES["view_kl"].views_term(logits, None),
                             expected["view_kl"], **TOL)
  assert "marginal_entropy" not in PER_VIEW


@pytest.mark.parametrize("names", [("view_kl", "embedding_agreement"),
                                   ("view_kl", "marginal_entropy")])
def test_switched_objective_is_the_indexed_one(names):
  logits, feats = _logits_and_features()
  objectives = [losses.INNER_OBJECTIVES[n] for n in names]
  for index, objective in enumerate(objectives):
    switched = jax.jit(lambda i, lg, f: losses.switched(objectives, i).views_term(lg, f))
    np.testing.assert_allclose(switched(index, logits, feats),
                               objective.views_term(logits, feats), **TOL)
  assert losses.switched(objectives, 0).is_per_view == all(o.is_per_view for o in objectives)


def test_an_unknown_inner_objective_names_the_choices():
  with pytest.raises(UserError, match="'no_such_loss'") as err:
    metatpt.MetaTPTSpec(aux_loss="no_such_loss")
  for name in losses.INNER_OBJECTIVES:
    assert repr(name) in str(err.value)


def test_a_registered_inner_objective_becomes_a_valid_choice():
  objective = losses.InnerObjective(per_view=lambda lg, f, ref_lg, ref_f: jnp.sum(f, axis=-1),
                                    reads_prompt=False)
  losses.register_inner_objective("feature_sum", objective)
  try:
    spec = metatpt.MetaTPTSpec(aux_loss="feature_sum", aux_penalty=0.5, view_chunk=4)
    assert spec.inner_objective().penalty_weight == 0.5
  finally:
    del losses.INNER_OBJECTIVES["feature_sum"]


# Class 1 is impossible in every view. For a logit of -inf its marginal log-probability is -inf,
# where an unguarded p * log p is 0 * -inf = NaN (measured: the test fails without the clamp).
# A logit of -1e30 stays finite in float32 (log-probability about -1e30, p * log p = 0): a
# log(softmax) computed naively would still give log 0 there. View 0 puts softmax(0, 2) on
# classes 0 and 2, view 1 is sure of class 0.
_P0 = np.array([1.0, 0.0, np.exp(2.0)]) / (1.0 + np.exp(2.0))
_MASKED_MARGINAL = _entropy((_P0 + np.array([1.0, 0.0, 0.0])) / 2)
# A logit of +1e30 makes view 0 sure of class 0; view 1 is uniform over 3 classes.
_HUGE_MARGINAL = _entropy((np.array([1.0, 0.0, 0.0]) + np.full(3, 1 / 3)) / 2)


@JIT
@pytest.mark.parametrize("logits,expected", [
    ([[0.0, -1e30, 2.0], [1e30, -1e30, -1e30]], _MASKED_MARGINAL),
    ([[0.0, -np.inf, 2.0], [1.0, -np.inf, -np.inf]], _MASKED_MARGINAL),
    ([[1e30, 0.0, 0.0], [0.0, 0.0, 0.0]], _HUGE_MARGINAL),
], ids=["minus_1e30", "minus_inf", "plus_1e30"])
def test_marginal_entropy_finite_for_extreme_logits(logits, expected, jit):
  value = _call(losses.marginal_entropy, jnp.array(logits, jnp.float32), jit=jit)
  assert np.isfinite(value)
  np.testing.assert_allclose(value, expected, **TOL)

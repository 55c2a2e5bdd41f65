"""Test-time objectives, registered by name so a config selects them.

All functions are per sample: `logits` is [V, C] for V views of one image, view 0 the original.
"""
from __future__ import annotations

from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp


def view_entropy(logits: jax.Array) -> jax.Array:
  """Entropy of each view's prediction: [V, C] -> [V]."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def select_confident(logits: jax.Array, num_keep: int) -> jax.Array:
  """Indices [num_keep] of the lowest-entropy views (TPT's confidence selection).

  `num_keep` is static (TPT: int(64 * 0.1) = 6), so shapes never depend on data.
  """
  chex.assert_rank(logits, 2)
  _, idx = jax.lax.top_k(-jax.lax.stop_gradient(view_entropy(logits)), num_keep)
  return idx


def marginal_log_probs(logits: jax.Array) -> jax.Array:
  """log of the average of per-view softmax probabilities, computed in log space: [V, C] -> [C]."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  return jax.nn.logsumexp(logp, axis=0) - jnp.log(logits.shape[0])


def marginal_entropy(logits: jax.Array) -> jax.Array:
  """TPT's loss: entropy of the averaged prediction over the given views."""
  avg = marginal_log_probs(logits)
  avg = jnp.maximum(avg, jnp.finfo(avg.dtype).min)  # as TPT: keep 0 * -inf out of the sum
  return -jnp.sum(jnp.exp(avg) * avg)


def kl_to_mean(logits: jax.Array) -> jax.Array:
  """Mean over views of KL(p_v || p_mean), p_mean the averaged prediction: consistency."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  avg = marginal_log_probs(logits)
  return jnp.mean(jnp.sum(jnp.exp(logp) * (logp - avg), axis=-1))


def kl_from_reference_per_view(logits: jax.Array, ref_logits: jax.Array) -> jax.Array:
  """KL(p_ref || p_v) for each view: [K, C], [C] -> [K]."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  ref = jax.nn.log_softmax(ref_logits, axis=-1)
  return jnp.sum(jnp.exp(ref) * (ref - logp), axis=-1)


def kl_from_reference(logits: jax.Array) -> jax.Array:
  """Mean over views 1..V-1 of KL(p_0 || p_v): agreement of each view with view 0."""
  return jnp.mean(kl_from_reference_per_view(logits[1:], logits[0]))


def cosine_distance_per_view(features: jax.Array, ref_feature: jax.Array) -> jax.Array:
  """1 - cos(f_v, f_ref) for each view: [K, E], [E] -> [K]."""
  f = features / jnp.linalg.norm(features, axis=-1, keepdims=True)
  return 1.0 - f @ (ref_feature / jnp.linalg.norm(ref_feature))


def embedding_disagreement(image_features: jax.Array) -> jax.Array:
  """Mean over views 1..V-1 of 1 - cos(f(v_k), f(v_0)); independent of the prompt."""
  return jnp.mean(cosine_distance_per_view(image_features[1:], image_features[0]))


# Auxiliary losses that are a mean over the generated views 1..V-1 of a term of that view
# alone (given view 0, which the inner step does not change): fn(logits [K, C], features
# [K, E], view-0 logits [C], view-0 feature [E]) -> [K]. The inner gradient of these can run
# over chunks of views (MetaTPTSpec.view_chunk).
PER_VIEW_AUX: dict[str, Callable] = {
    "view_kl": lambda lg, f, ref_lg, ref_f: kl_from_reference_per_view(lg, ref_lg),
    "embedding_agreement": lambda lg, f, ref_lg, ref_f: cosine_distance_per_view(f, ref_f),
    # Confident views that keep the sample's content: each generated view's own entropy plus
    # its disagreement with view 0 (a view may be sure, but of view 0's class).
    "confident_agreement": lambda lg, f, ref_lg, ref_f: (view_entropy(lg)
                                                         + kl_from_reference_per_view(lg, ref_lg)),
}


def _mean_of_per_view(name):
  def loss(logits, feats):  # feats may be None for the losses that read only logits
    rest, ref = (None, None) if feats is None else (feats[1:], feats[0])
    return jnp.mean(PER_VIEW_AUX[name](logits[1:], rest, logits[0], ref))
  return loss


# Auxiliary (inner-loop) losses: fn(logits [V, C], image_features [V, E]) -> scalar.
AUX_LOSSES: dict[str, Callable] = {
    **{name: _mean_of_per_view(name) for name in PER_VIEW_AUX},
    # The entropy of the marginal over all views: not a sum of per-view terms.
    "marginal_entropy": lambda logits, feats: marginal_entropy(logits),
}
# Which auxiliary losses need the prompt (and so give the prompt a second-order term).
AUX_USES_PROMPT = {"view_kl": True, "embedding_agreement": False, "marginal_entropy": True,
                   "confident_agreement": True}


def consistency_on_kept(kept_logits: jax.Array, consistency_weight: float):
  """MetaTPT's outer loss on already-selected views: marginal entropy + weight * KL to mean."""
  return marginal_entropy(kept_logits) + consistency_weight * kl_to_mean(kept_logits)


def consistency_loss(logits: jax.Array, num_keep: int, consistency_weight: float):
  """MetaTPT's outer loss on the confident views: marginal entropy + weight * KL to their mean."""
  return consistency_on_kept(logits[select_confident(logits, num_keep)], consistency_weight)


def get_per_view_aux_loss(name: str) -> Callable:
  if name not in PER_VIEW_AUX:
    raise ValueError(f"Auxiliary loss {name!r} is not a mean of per-view terms, so its gradient "
                     f"cannot run over chunks of views; use view_chunk=0 or one of "
                     f"{sorted(PER_VIEW_AUX)}.")
  return PER_VIEW_AUX[name]


def get_aux_loss(name: str) -> Callable:
  if name not in AUX_LOSSES:
    raise ValueError(f"Unknown auxiliary loss {name!r}; registered: {sorted(AUX_LOSSES)}.")
  return AUX_LOSSES[name]

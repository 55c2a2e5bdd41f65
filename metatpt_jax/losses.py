"""Test-time objectives, registered by name so a config selects them.

All functions are per sample: `logits` is [V, C] for V views of one image, view 0 the original.
"""
from __future__ import annotations

from typing import Callable

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


def kl_from_reference(logits: jax.Array) -> jax.Array:
  """Mean over views 1..V-1 of KL(p_0 || p_v): agreement of each view with view 0."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  ref = logp[0]
  return jnp.mean(jnp.sum(jnp.exp(ref) * (ref - logp[1:]), axis=-1))


def embedding_disagreement(image_features: jax.Array) -> jax.Array:
  """Mean over views 1..V-1 of 1 - cos(f(v_k), f(v_0)); independent of the prompt."""
  f = image_features / jnp.linalg.norm(image_features, axis=-1, keepdims=True)
  return jnp.mean(1.0 - f[1:] @ f[0])


# Auxiliary (inner-loop) losses: fn(logits [V, C], image_features [V, E]) -> scalar.
AUX_LOSSES: dict[str, Callable] = {
    "view_kl": lambda logits, feats: kl_from_reference(logits),
    "embedding_agreement": lambda logits, feats: embedding_disagreement(feats),
    "marginal_entropy": lambda logits, feats: marginal_entropy(logits),
    # Confident views that keep the sample's content: each generated view's own entropy plus
    # its disagreement with view 0 (a view may be sure, but of view 0's class).
    "confident_agreement": lambda logits, feats: (jnp.mean(view_entropy(logits[1:]))
                                                  + kl_from_reference(logits)),
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


def get_aux_loss(name: str) -> Callable:
  if name not in AUX_LOSSES:
    raise ValueError(f"Unknown auxiliary loss {name!r}; registered: {sorted(AUX_LOSSES)}.")
  return AUX_LOSSES[name]

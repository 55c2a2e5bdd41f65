"""Test-time objectives: TPT's entropy and confidence selection, MetaTPT's outer loss, and
MetaTPT's inner objectives (`InnerObjective`, registered by name so a spec selects one).

All functions are per sample: `logits` is [V, C] for V views of one image, view 0 the original.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Annotated

import chex
import jax
import jax.numpy as jnp

from metatpt_jax.specs import Choices


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


def cosine_distance_per_view(features: jax.Array, ref_feature: jax.Array) -> jax.Array:
  """1 - cos(f_v, f_ref) for each view: [K, E], [E] -> [K]."""
  f = features / jnp.linalg.norm(features, axis=-1, keepdims=True)
  return 1.0 - f @ (ref_feature / jnp.linalg.norm(ref_feature))


def marginal_entropy_and_consistency(kept_logits: jax.Array, consistency_weight: float):
  """MetaTPT's outer loss on already-selected views [K, C]: the entropy of their averaged
  prediction + consistency_weight * the mean KL of each view to that average."""
  return marginal_entropy(kept_logits) + consistency_weight * kl_to_mean(kept_logits)


@dataclasses.dataclass(frozen=True)
class InnerObjective:
  """MetaTPT's self-supervised inner objective L_aux on one image's views (view 0 the image):

    L_aux = views_term(logits [V, C], features [V, E]) + penalty_weight * penalty,

  where penalty is the generator's deviation from its initial distribution (`generator`).

  per_view(logits [K, C], features [K, E], view-0 logits [C], view-0 feature [E]) -> [K]: the
    term of each generated view given view 0 (which the inner step does not move); views_term
    is their mean, so its gradient can be summed over chunks of views (MetaTPTSpec.view_chunk).
    None for an objective that is not such a mean: then `whole(logits, features)` is views_term.
  reads_prompt: whether views_term reads the logits, and so the prompt. Only then does the
    prompt's meta-gradient have a second-order term; otherwise no logits are computed for it
    (they are passed as None).
  """
  per_view: Callable | None = None
  whole: Callable | None = None
  reads_prompt: bool = True
  penalty_weight: float = 1.0

  @property
  def is_per_view(self) -> bool:
    return self.per_view is not None

  def views_term(self, logits: jax.Array | None, features: jax.Array | None) -> jax.Array:
    """The mean of the per-view terms (or `whole`); logits or features may be None for an
    objective that does not read them."""
    if self.per_view is None:
      return self.whole(logits, features)
    split = lambda x: (None, None) if x is None else (x[1:], x[0])
    (rest_logits, ref_logits), (rest_feats, ref_feat) = split(logits), split(features)
    return jnp.mean(self.per_view(rest_logits, rest_feats, ref_logits, ref_feat))

  def penalty_term(self, penalty: jax.Array) -> jax.Array:
    return self.penalty_weight * penalty

  def loss(self, logits: jax.Array | None, features: jax.Array, penalty: jax.Array):
    """L_aux on all views at once."""
    return self.views_term(logits, features) + self.penalty_term(penalty)


# MetaTPT's inner objectives by name (`MetaTPTSpec.aux_loss` is checked against this table).
INNER_OBJECTIVES: dict[str, InnerObjective] = {}
InnerObjectiveName = Annotated[str, Choices(INNER_OBJECTIVES)]


def register_inner_objective(name: str, objective: InnerObjective) -> InnerObjective:
  """Makes `name` a valid `MetaTPTSpec.aux_loss`; the penalty weight comes from the spec
  (`aux_penalty`), so the registered objective keeps the default."""
  if name in INNER_OBJECTIVES:
    raise ValueError(f"Inner objective {name!r} is registered twice.")
  if objective.penalty_weight != InnerObjective.penalty_weight:
    raise ValueError(f"Inner objective {name!r}: leave penalty_weight at its default; "
                     "MetaTPTSpec.aux_penalty sets it.")
  INNER_OBJECTIVES[name] = objective
  return objective


register_inner_objective("view_kl", InnerObjective(  # KL(view 0 || view k): agree with view 0
    per_view=lambda lg, f, ref_lg, ref_f: kl_from_reference_per_view(lg, ref_lg)))
# The name says what the objective seeks (agreement); its value is the cosine disagreement it
# minimises. Kept: committed records are keyed by it.
register_inner_objective("embedding_agreement", InnerObjective(
    per_view=lambda lg, f, ref_lg, ref_f: cosine_distance_per_view(f, ref_f),
    reads_prompt=False))
# Confident views that keep the sample's content: each generated view's own entropy plus its
# disagreement with view 0 (a view may be sure, but of view 0's class).
register_inner_objective("confident_agreement", InnerObjective(
    per_view=lambda lg, f, ref_lg, ref_f: view_entropy(lg) + kl_from_reference_per_view(lg,
                                                                                      ref_lg)))


def confident_consensus(logits: jax.Array, keep_fraction: float = 0.1) -> jax.Array:
  """Agreement among the most confident generated views, view 0 left out: the mean KL of each
  of the int(keep_fraction * K) (at least 2: one view agrees with itself) lowest-entropy views
  [K, C] to their average."""
  num_keep = min(logits.shape[0], max(2, int(logits.shape[0] * keep_fraction)))
  return kl_to_mean(logits[select_confident(logits, num_keep)])


def feature_consensus(features: jax.Array) -> jax.Array:
  """Image-feature invariance with no anchor: the mean cosine distance of each view's
  feature [K, E] to the mean of their normalised features."""
  f = features / jnp.linalg.norm(features, axis=-1, keepdims=True)
  return jnp.mean(cosine_distance_per_view(f, jnp.mean(f, axis=0)))


# Objectives not anchored on view 0's prediction (v2's analysis: anchoring on view 0 teaches
# the generator to copy the image the prompt already sees). Generated views only.
register_inner_objective("confident_consensus", InnerObjective(
    whole=lambda logits, feats: confident_consensus(logits[1:])))
register_inner_objective("feature_consensus", InnerObjective(
    whole=lambda logits, feats: feature_consensus(feats[1:]), reads_prompt=False))
# The entropy of the marginal over all views: not a mean of per-view terms.
register_inner_objective("marginal_entropy", InnerObjective(
    whole=lambda logits, feats: marginal_entropy(logits)))


def switched(objectives: Sequence[InnerObjective], index: jax.Array) -> InnerObjective:
  """objectives[index] for a traced int `index` (`lax.switch`), so a sweep over objectives
  compiles once. Per-view when every one is; reads the prompt when any does."""
  weights = {o.penalty_weight for o in objectives}
  if len(weights) != 1:
    raise ValueError(f"Switched inner objectives need one penalty weight; got {weights}.")
  reads = any(o.reads_prompt for o in objectives)
  if all(o.is_per_view for o in objectives):
    per_view = lambda *args: jax.lax.switch(index, [o.per_view for o in objectives], *args)
    return InnerObjective(per_view=per_view, reads_prompt=reads, penalty_weight=weights.pop())
  whole = lambda *args: jax.lax.switch(index, [o.views_term for o in objectives], *args)
  return InnerObjective(whole=whole, reads_prompt=reads, penalty_weight=weights.pop())

"""Training-free test-time baselines on TPT's views: ZERO and MTA (per sample, no gradient).

ZERO (Farina et al., NeurIPS 2024): TPT's views and confidence selection, then the prediction is
the vote of the kept views' argmax classes (the averaged prediction at zero temperature). As the
authors' code: 30 % of 64 views kept, view 0 not forced in, and a tie is broken by the discarded
views in order of confidence (the first whose argmax is one of the tied classes adds a vote).

MTA (Zanella and Ben Ayed, CVPR 2024): a mode of the views' embeddings by mean shift, each view
weighted by an inlierness score; scores and mode are updated in turn by closed-form steps
(`mta_mode`), and the prediction is the mode's similarity to the class text features.

Both return logits [C] of the initial prompt and metrics, like every per-sample method here;
ZERO's logits are the log of its vote shares (so softmax gives the shares as confidences).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import chex
import jax
import jax.numpy as jnp

from metatpt_jax import losses, registry, views
from metatpt_jax.errors import UserError
from metatpt_jax.frozen_clip import FrozenCLIP, ModelSpec, class_features, encode_images, logits
from metatpt_jax.specs import ConfidentViewsSpec, ViewsSpec


@dataclasses.dataclass(frozen=True)
class ZeroSpec(ConfidentViewsSpec):
  """ZERO's defaults (the authors' code): 64 views, 30 % kept.

  temperature: the authors' "zero temperature" is the machine epsilon of the logits' dtype,
  dividing cosine similarities before a softmax: under their fp16 autocast 2**-10, a soft vote
  where the kept views' top two classes are within about 0.01 in cosine; in fp32 (2**-23) a hard
  vote. 0 counts argmax votes (the fp32 limit); 2**-10 is their fp16 runs
  (configs/paper.py's `fp16` policy)."""
  selection_ratio: float = 0.3
  temperature: float = 0.0
  later_fields: ClassVar[tuple[str, ...]] = ("temperature",)


def _view_logits(frozen, image, key, spec, mspec, source):
  """(view features [V, E] without gradient, class text features [C, E] of the initial prompt,
  logits [V, C]) on TPT's views."""
  all_views = spec.make_views(image, key, source)
  feats = jax.lax.stop_gradient(encode_images(frozen, all_views, mspec))
  text = class_features(frozen, frozen.ctx_init, mspec)
  return feats, text, logits(frozen, feats, text)


def zero_votes(view_logits: jax.Array, num_keep: int, temperature: float = 0.0,
               logit_scale=1.0) -> jax.Array:
  """ZERO's votes [C]: argmax counts of the `num_keep` most confident views (temperature 0), or
  the sum of their softmax(cosine / temperature) (cosine = logits / logit_scale), plus one vote
  for the tied class that the most confident discarded view names (no vote if none does)."""
  order = jnp.argsort(losses.view_entropy(view_logits), stable=True)
  classes = jnp.argmax(view_logits[order], axis=-1)
  num_classes = view_logits.shape[-1]
  if temperature > 0:
    cosine = view_logits[order[:num_keep]] / logit_scale
    votes = jnp.sum(jax.nn.softmax(cosine.astype(jnp.float32) / temperature, axis=-1), axis=0)
  else:
    votes = jnp.sum(jax.nn.one_hot(classes[:num_keep], num_classes), axis=0)
  tied = votes == votes.max()
  discarded = classes[num_keep:]
  names_tied = tied[discarded]
  breaker = discarded[jnp.argmax(names_tied)]  # the first discarded view naming a tied class
  is_tie = jnp.sum(tied) > 1
  return votes + jnp.where(is_tie & jnp.any(names_tied),
                           jax.nn.one_hot(breaker, num_classes), 0.0)


def zero_one_sample(frozen: FrozenCLIP, image: jax.Array, key: jax.Array, spec: ZeroSpec,
                    mspec: ModelSpec, source: views.Source | None = None):
  """ZERO on one image: (log vote shares [C], metrics)."""
  chex.assert_rank(image, 3)
  _, _, view_logits = _view_logits(frozen, image, key, spec, mspec, source)
  votes = zero_votes(view_logits, spec.num_keep, spec.temperature,
                     jnp.exp(frozen.params["logit_scale"]))
  shares = votes / jnp.sum(votes)
  return jnp.log(jnp.maximum(shares, 1e-12)), dict(zero_shot_logits=view_logits[0])


@dataclasses.dataclass(frozen=True)
class MTASpec(ViewsSpec):
  """MTA's defaults (the authors' code): 64 views, lambda_q 4, lambda_y 0.2, 5 iterations."""
  lambda_q: float = 4.0         # weight of the views' prediction affinity in the scores
  lambda_y: float = 0.2         # temperature of the scores' softmax
  bandwidth_neighbors: float = 0.3  # fraction of the other views whose distances set h_j
  outer_iterations: int = 5
  inner_iterations: int = 5     # at most, per update of the scores and of the mode
  tolerance: float = 1e-6

  def check(self) -> None:
    if self.n_views < 2 or int(self.bandwidth_neighbors * (self.n_views - 1)) < 1:
      raise UserError(f"MTA needs n_views >= 2 and bandwidth_neighbors * (n_views - 1) >= 1; "
                      f"got n_views={self.n_views}, bandwidth_neighbors="
                      f"{self.bandwidth_neighbors}.")


def _fixed_point(update, x, iterations: int, tolerance: float):
  """Up to `iterations` steps x <- update(x), stopping once a step moves x by < tolerance."""
  def step(carry, _):
    x, done = carry
    new = update(x)
    moved = jnp.linalg.norm(new - x)
    return (jnp.where(done, x, new), done | (moved < tolerance)), None
  # `zeros_like`/`full_like` keep x's device variance, so the carry's type is stable under
  # shard_map (a fresh constant would be device-invariant and the body's output varying).
  (x, _), _ = jax.lax.scan(step, (x, jnp.zeros_like(x[0], dtype=bool)), None,
                           length=iterations)
  return x


def mta_mode(feats: jax.Array, probs: jax.Array, spec: MTASpec):
  """MTA's mode [E] of unit view features [N, E] given their predictions [N, C], and the final
  inlierness scores [N]. Mode starts at view 0, scores at 1/N."""
  n = feats.shape[0]
  sq = jnp.sum((feats[:, None] - feats[None]) ** 2, axis=-1)
  k = int(spec.bandwidth_neighbors * (n - 1))
  nearest = jnp.sort(sq + jnp.diag(jnp.full((n,), jnp.inf)), axis=1)[:, :k]
  h2 = 0.5 * jnp.mean(nearest, axis=1)                  # h_j^2
  affinity = probs @ probs.T
  kernel = lambda m: jnp.exp(-jnp.sum((feats - m) ** 2, axis=-1) / (2 * h2))

  def outer(carry, _):
    mode, y = carry
    k_m = kernel(mode)
    y = _fixed_point(lambda y: jax.nn.softmax((k_m + spec.lambda_q * affinity @ y)
                                              / spec.lambda_y), y,
                     spec.inner_iterations, spec.tolerance)

    def shift(m):
      w = y * kernel(m)
      m = w @ feats / jnp.sum(w)
      return m / jnp.linalg.norm(m)
    return (_fixed_point(shift, mode, spec.inner_iterations, spec.tolerance), y), None

  (mode, y), _ = jax.lax.scan(outer, (feats[0], jnp.full_like(probs[:, 0], 1.0 / n)), None,
                              length=spec.outer_iterations)
  return mode, y


def mta_one_sample(frozen: FrozenCLIP, image: jax.Array, key: jax.Array, spec: MTASpec,
                   mspec: ModelSpec, source: views.Source | None = None):
  """MTA on one image: (logits [C] of the mode, metrics with the inlierness scores)."""
  chex.assert_rank(image, 3)
  feats, text, view_logits = _view_logits(frozen, image, key, spec, mspec, source)
  mode, scores = mta_mode(feats, jax.nn.softmax(view_logits, axis=-1), spec)
  return logits(frozen, mode[None], text)[0], dict(zero_shot_logits=view_logits[0],
                                                   view0_score=scores[0])


registry.register(registry.Method("zero", registry.stateless(zero_one_sample),
                                  spec_type=ZeroSpec, group="baseline"))
registry.register(registry.Method("mta", registry.stateless(mta_one_sample),
                                  spec_type=MTASpec, group="baseline"))

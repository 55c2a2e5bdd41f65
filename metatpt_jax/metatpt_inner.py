"""MetaTPT's inner loop: L_aux on the generator's views, its gradient, and the inner update.

    phi' = phi - inner_lr * grad_phi L_aux(phi; x, p)     (`inner_update`, inner_steps times)

L_aux is a `losses.InnerObjective` (`MetaTPTSpec.inner_objective()`: the named objective and the
weight of the generator's deviation penalty). The update is an optax transform (`inner_optimizer`:
SGD, or SGD on the gradient scaled to unit global norm). Everything is differentiable in phi and
in the prompt p, so the outer loss (`metatpt`) can take its gradient through the update.

`InnerSweep` gives the inner learning rate, step count and objective as traced values, so a
sweep over them (notebook 01, `hypergrad`) compiles once and runs this same code.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metatpt_jax import generator as gen
from metatpt_jax import losses, views
from metatpt_jax.frozen_clip import FrozenCLIP, ModelSpec, class_features, encode_images, logits


class Episode(NamedTuple):
  """Per-sample constants shared by the inner and outer losses."""
  image: jax.Array      # [S, S, 3] view 0
  feature0: jax.Array   # [E] view-0 feature (no gradient; conditions the generator)
  noise: jax.Array      # [K, F] generator noise, fixed for the episode
  source: views.Source | None = None  # the decoded image the views are cut from (None: image)


def make_episode(frozen: FrozenCLIP, image: jax.Array, key: jax.Array, spec,
                 mspec: ModelSpec, source: views.Source | None = None) -> Episode:
  """The episode of one image: its view-0 feature (no gradient), spec.n_views - 1 noise vectors
  from key and the source the views are cut from (default: the image itself)."""
  feature0 = jax.lax.stop_gradient(encode_images(frozen, image[None], mspec)[0])
  noise = gen.sample_noise(key, spec.n_views - 1, spec.generator).astype(image.dtype)
  return Episode(image, feature0, noise, source)


def view_features(frozen, phi, ep: Episode, spec, mspec: ModelSpec, ctx=None):
  """Features [K+1, E] of view 0 and the generated views (gradient flows to phi) + penalty;
  `ctx`: the prompt the views are seen under where the backbone's image features read it."""
  all_views, penalty = gen.learned_views(phi, spec.generator, ep.image, ep.noise, ep.feature0,
                                         ep.source)
  feats = encode_images(frozen, all_views[1:], mspec, remat=mspec.remat, ctx=ctx)
  return jnp.concatenate([ep.feature0[None], feats], axis=0), penalty


def inner_loss(frozen, phi, ctx, ep: Episode, spec, mspec, objective: losses.InnerObjective):
  """L_aux(phi; x, p) on all views at once."""
  feats, penalty = view_features(frozen, phi, ep, spec, mspec, ctx)
  view_logits = (logits(frozen, feats, class_features(frozen, ctx, mspec))
                 if objective.reads_prompt else None)
  return objective.loss(view_logits, feats, penalty)


def inner_grad(frozen, phi, ctx, ep: Episode, spec, mspec, objective: losses.InnerObjective):
  """grad_phi L_aux(phi; x, p): all views at once, or by chunks when spec.view_chunk > 0."""
  if not spec.view_chunk:
    return jax.grad(inner_loss, argnums=1)(frozen, phi, ctx, ep, spec, mspec, objective)
  if not objective.is_per_view:
    raise ValueError("view_chunk > 0 needs an inner objective that is a mean of per-view "
                     "terms; set view_chunk=0.")
  return chunked_inner_grad(frozen, phi, ctx, ep, spec, mspec, objective)


def chunked_inner_grad(frozen, phi, ctx, ep: Episode, spec, mspec,
                       objective: losses.InnerObjective):
  """grad_phi L_aux as a sum over chunks of `spec.view_chunk` generated views.

  L_aux = mean_k l(f(view_k(phi)), p) + penalty(phi), so its gradient is a sum of per-chunk
  gradients. Each chunk's gradient is rematerialised (`jax.checkpoint`) inside `lax.scan`: a
  derivative of this function (the second-order meta-gradient) keeps only each chunk's inputs
  and recomputes one chunk at a time. The last chunk is padded with zero-weight views.
  """
  k, c = ep.noise.shape[0], spec.view_chunk
  n = -(-k // c)
  noise = jnp.pad(ep.noise, ((0, n * c - k), (0, 0))).reshape(n, c, -1)
  weight = ((jnp.arange(n * c) < k) / k).astype(ep.noise.dtype).reshape(n, c)
  text = class_features(frozen, ctx, mspec) if objective.reads_prompt else None
  ref_logits = None if text is None else logits(frozen, ep.feature0[None], text)[0]

  def chunk_loss(phi, ctx, text, ref_logits, noise_c, weight_c):
    transforms, _, _ = gen.generate_transforms(phi, spec.generator, noise_c, ep.feature0)
    feats = encode_images(frozen, gen.apply_transforms(transforms, ep.image, ep.source), mspec,
                          remat=mspec.remat, ctx=ctx)
    view_logits = None if text is None else logits(frozen, feats, text)
    return jnp.sum(weight_c * objective.per_view(view_logits, feats, ref_logits, ep.feature0))

  chunk_grad = jax.checkpoint(jax.grad(chunk_loss))

  def body(total, xs):
    return jax.tree.map(jnp.add, total, chunk_grad(phi, ctx, text, ref_logits, *xs)), None

  total, _ = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, phi), (noise, weight))
  penalty = lambda p: objective.penalty_term(
      gen.generate_thetas(p, spec.generator, ep.noise, ep.feature0)[2])
  return jax.tree.map(jnp.add, total, jax.grad(penalty)(phi))


def normalized_sgd(lr, eps: float = 1e-12) -> optax.GradientTransformation:
  """SGD with step size lr / (||g|| + eps): a step of length lr whatever the gradient's size.
  The update is -(step * g), bit for bit what the records of this variant were computed with."""
  def update(updates, state, params=None):
    del params
    step = lr / (optax.tree.norm(updates) + eps)
    return jax.tree.map(lambda g: -(step * g), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def inner_optimizer(inner_step: str, lr) -> optax.GradientTransformation:
  """The inner step as an optax transform (`lr` may be traced). sgd: phi - lr * g;
  normalized: phi - lr * g / ||g|| (`normalized_sgd`)."""
  return normalized_sgd(lr) if inner_step == "normalized" else optax.sgd(lr)


class InnerSweep(NamedTuple):
  """Inner-loop settings given as (traced) values instead of the spec's; None keeps the spec's.

  lr: the inner learning rate. steps: how many of the spec's `inner_steps` steps to take (the
  rest leave phi' as it is, so any value up to spec.inner_steps runs the same compiled code).
  objective: the inner objective (e.g. `losses.switched` over several).
  Build it inside the jitted function (as `hypergrad` does): its objective is not a JAX value.
  """
  lr: Any = None
  steps: Any = None
  objective: losses.InnerObjective | None = None


NO_SWEEP = InnerSweep()  # the spec's own settings


def inner_update(frozen, phi, ctx, ep: Episode, spec, mspec, sweep: InnerSweep = NO_SWEEP):
  """phi' after spec.inner_steps steps on L_aux (as the outer loss sees it: `ORDERS`)."""
  if isinstance(sweep.steps, int) and not 0 <= sweep.steps <= spec.inner_steps:
    raise ValueError(f"InnerSweep.steps={sweep.steps}: at most spec.inner_steps="
                     f"{spec.inner_steps} (raise it in the spec to sweep further).")
  objective = spec.inner_objective() if sweep.objective is None else sweep.objective
  opt = inner_optimizer(spec.inner_step, spec.inner_lr if sweep.lr is None else sweep.lr)
  adapted, opt_state = phi, opt.init(phi)
  for i in range(spec.inner_steps):  # few, static steps: unrolled
    grads = inner_grad(frozen, adapted, ctx, ep, spec, mspec, objective)
    updates, opt_state = opt.update(grads, opt_state, adapted)
    stepped = optax.apply_updates(adapted, updates)
    adapted = stepped if sweep.steps is None else jax.tree.map(
        lambda s, a, i=i: jnp.where(i < sweep.steps, s, a), stepped, adapted)
  return ORDERS[spec.order](phi, adapted)


def first_order(phi, adapted):
  """phi' with the value of `adapted` but the gradient of `phi` (FOMAML: d phi'/d phi = I and
  no path to the prompt)."""
  return jax.tree.map(lambda w, a: w + jax.lax.stop_gradient(a - w), phi, adapted)


# order -> fn(phi, adapted phi') -> phi' as the outer loss sees it.
ORDERS = {"second": lambda phi, adapted: adapted, "first": first_order}

"""MetaTPT's hypergradient, second versus first order, for inspection (notebooks, tests).

The hypergradient is grad_{p, phi} L_out(p, phi), where L_out sees the views of the adapted
generator phi'(phi, p) (`metatpt.outer_loss`). Second order differentiates through the inner
update (d phi'/d phi = I - alpha * H_phi, d phi'/d p = -alpha * d^2 L_aux / d phi d p); first
order stops the gradient at phi' (FOMAML). README "MetaTPT as implemented", "When second
order matters": the prompt's two gradients differ only if L_aux depends on p.

Everything here is the gradient of the *first* outer step of `metatpt.metatpt_adapt_one_sample`:
the same episode (view-0 feature, generator noise drawn from `key`) and the same starting point
(p = frozen.ctx_init, the given phi).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from metatpt_jax import losses, metatpt
from metatpt_jax.clip.config import CLIPArch, TextArch, VisionArch
from metatpt_jax.frozen_clip import FrozenCLIP, ModelSpec, class_features, logits

ORDERS = ("second", "first")

# A CLIP small enough that second-order gradients compile in seconds on a CPU (notebook 01; the
# sizes of tests/method_helpers.TEST_ARCH). Its context of 16 tokens fits "a photo of a <class>."
# for short class names. Use it with random weights: it is for inspecting gradients, not accuracy.
INSPECTION_ARCH = CLIPArch(
    vision=VisionArch(image_size=16, patch_size=8, width=32, layers=2, heads=2),
    text=TextArch(context_length=16, width=32, layers=2, heads=2), embed_dim=16)


# The per-sample constants of `metatpt_adapt_one_sample` (view-0 feature, generator noise).
make_episode = metatpt.make_episode


def meta_loss_fn(frozen: FrozenCLIP, image: jax.Array, key: jax.Array,
                 spec: metatpt.MetaTPTSpec, mspec: ModelSpec) -> Callable:
  """meta -> L_out(meta), meta = {"ctx": p [n_ctx, W], "phi": phi}: `metatpt.outer_loss`."""
  ep = make_episode(frozen, image, key, spec, mspec)
  return lambda meta: metatpt.outer_loss(frozen, meta, ep, spec, mspec)


def meta_gradient(frozen: FrozenCLIP, phi, image: jax.Array, key: jax.Array,
                  spec: metatpt.MetaTPTSpec, mspec: ModelSpec):
  """grad_{p, phi} L_out at p = frozen.ctx_init, of order spec.order: {"ctx", "phi"}."""
  loss = meta_loss_fn(frozen, image, key, spec, mspec)
  return jax.grad(loss)({"ctx": frozen.ctx_init, "phi": phi})


def hypergradients(frozen: FrozenCLIP, phi, image: jax.Array, key: jax.Array,
                   spec: metatpt.MetaTPTSpec, mspec: ModelSpec):
  """(second-order, first-order) meta-gradients, each {"ctx": [n_ctx, W], "phi": pytree}.

  Jit with spec and mspec static (argnums 4, 5).
  """
  return tuple(meta_gradient(frozen, phi, image, key, spec._replace(order=order), mspec)
               for order in ORDERS)


# The auxiliary losses a swept gradient can switch between at run time (`aux_index`).
SWEPT_AUX_LOSSES = ("view_kl", "embedding_agreement")


def _switched_aux_loss(frozen, phi, ctx, ep, spec, mspec, aux_index):
  """`metatpt.aux_loss` with L_aux = SWEPT_AUX_LOSSES[aux_index] (traced) instead of spec's."""
  feats, penalty = metatpt.view_features(frozen, phi, ep, spec, mspec)
  view_logits = logits(frozen, feats, class_features(frozen, ctx, mspec))
  heads = [losses.get_aux_loss(name) for name in SWEPT_AUX_LOSSES]
  return jax.lax.switch(aux_index, heads, view_logits, feats) + spec.aux_penalty * penalty


def swept_outer_loss(frozen: FrozenCLIP, meta, ep, spec: metatpt.MetaTPTSpec, mspec: ModelSpec,
                     inner_lr, inner_steps, aux_index=None):
  """`metatpt.outer_loss` (dual loop) with the inner learning rate and step count traced.

  `lax.scan` runs spec.inner_steps inner steps (the most a sweep may ask for) and keeps the
  first `inner_steps` of them, so one compilation serves a whole (inner_lr, inner_steps) grid.
  aux_index (traced int or None): L_aux is SWEPT_AUX_LOSSES[aux_index] (`lax.switch`) instead
  of spec.aux_loss, so the same compilation also compares auxiliary losses.
  Equals `metatpt.outer_loss` with those values in the spec (tests/test_hypergrad.py).
  """
  ctx, phi = meta["ctx"], meta["phi"]
  one_step = spec._replace(inner_steps=1, inner_lr=inner_lr, order="second")

  def step(adapted, index):
    if aux_index is None:
      stepped = metatpt.inner_update(frozen, adapted, ctx, ep, one_step, mspec)
    else:
      g = jax.grad(_switched_aux_loss, argnums=1)(frozen, adapted, ctx, ep, spec, mspec,
                                                   aux_index)
      stepped = jax.tree.map(lambda w, d: w - inner_lr * d, adapted, g)
    return jax.tree.map(lambda s, a: jnp.where(index < inner_steps, s, a), stepped, adapted), None

  adapted, _ = jax.lax.scan(step, phi, jnp.arange(spec.inner_steps))
  if spec.order == "first":  # as metatpt.inner_update: identity Jacobian, no path to p
    adapted = metatpt.first_order(phi, adapted)
  return metatpt.consistency_on_generated(frozen, adapted, ctx, ep, spec, mspec)


def swept_meta_gradient(frozen: FrozenCLIP, phi, image: jax.Array, key: jax.Array,
                        spec: metatpt.MetaTPTSpec, mspec: ModelSpec, inner_lr, inner_steps,
                        aux_index=None):
  """`meta_gradient` (of order spec.order) with inner_lr (scalar), inner_steps (int <=
  spec.inner_steps) and aux_index (see `swept_outer_loss`) traced.

  Jit with spec and mspec static; then sweeping the traced arguments never recompiles. The
  scan always runs spec.inner_steps steps, so its run time is that of spec.inner_steps steps.
  """
  ep = make_episode(frozen, image, key, spec, mspec)
  loss = lambda m: swept_outer_loss(frozen, m, ep, spec, mspec, inner_lr, inner_steps, aux_index)
  return jax.grad(loss)({"ctx": frozen.ctx_init, "phi": phi})


def swept_hypergradients(frozen: FrozenCLIP, phi, image: jax.Array, key: jax.Array,
                         spec: metatpt.MetaTPTSpec, mspec: ModelSpec, inner_lr, inner_steps,
                         aux_index=None):
  """`hypergradients` with inner_lr, inner_steps and aux_index traced (`swept_meta_gradient`).

  Jit with spec and mspec static; then sweeping them never recompiles.
  """
  return tuple(swept_meta_gradient(frozen, phi, image, key, spec._replace(order=order), mspec,
                                   inner_lr, inner_steps, aux_index) for order in ORDERS)


def compare(second, first) -> dict:
  """Cosine similarity, norm ratio |second| / |first| and max |second - first| (floats)."""
  a, _ = ravel_pytree(second)
  b, _ = ravel_pytree(first)
  norm_a, norm_b = jnp.linalg.norm(a), jnp.linalg.norm(b)
  return dict(cosine=float(a @ b / (norm_a * norm_b)), norm_ratio=float(norm_a / norm_b),
              max_abs_diff=float(jnp.max(jnp.abs(a - b))))


def central_difference(loss: Callable, meta, direction, eps: float) -> float:
  """(loss(meta + eps d) - loss(meta - eps d)) / (2 eps) for a flat direction d.

  Use float64: the rounding error is ~ machine eps * |loss| / eps. Bilinear sampling is only
  piecewise smooth (its derivative jumps where a sample point crosses a pixel boundary), so
  `eps` must be small enough (~1e-7) that no sample point crosses one.
  """
  flat, unravel = ravel_pytree(meta)
  return float((loss(unravel(flat + eps * direction)) - loss(unravel(flat - eps * direction)))
               / (2 * eps))


def random_direction(key: jax.Array, meta) -> jax.Array:
  """A random unit vector in the flattened parameter space of `meta`."""
  flat, _ = ravel_pytree(meta)
  d = jax.random.normal(key, flat.shape, flat.dtype)
  return d / jnp.linalg.norm(d)


def directional_derivative(grad, direction) -> float:
  """<grad, direction> for a gradient pytree and a flat direction."""
  return float(ravel_pytree(grad)[0] @ direction)


def relative_error(analytic: float, numeric: float) -> float:
  return float(abs(analytic - numeric) / max(abs(numeric), np.finfo(np.float64).tiny))

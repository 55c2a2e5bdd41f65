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

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from metatpt_jax import losses, metatpt
from metatpt_jax.frozen_clip import FrozenCLIP, ModelSpec
from metatpt_jax.metatpt_inner import InnerSweep, make_episode

ORDERS = ("second", "first")


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
  return tuple(meta_gradient(frozen, phi, image, key, spec.replace(order=order), mspec)
               for order in ORDERS)


# The inner objectives a swept gradient can switch between at run time (`aux_index`).
SWEPT_AUX_LOSSES = ("view_kl", "embedding_agreement")


def swept_meta_gradient(frozen: FrozenCLIP, phi, image: jax.Array, key: jax.Array,
                        spec: metatpt.MetaTPTSpec, mspec: ModelSpec, inner_lr, inner_steps,
                        aux_index=None):
  """`meta_gradient` (of order spec.order) with the inner loop's settings traced: inner_lr
  (scalar), inner_steps (int <= spec.inner_steps) and aux_index (int into SWEPT_AUX_LOSSES, or
  None for spec.aux_loss). `metatpt.outer_loss` runs them as a `metatpt_inner.InnerSweep`.

  Jit with spec and mspec static; then sweeping the traced arguments never recompiles. The
  inner loop always runs spec.inner_steps steps (the later ones masked), so its run time is
  that of spec.inner_steps steps.
  """
  objective = None
  if aux_index is not None:
    objective = losses.switched([spec.replace(aux_loss=name).inner_objective()
                                 for name in SWEPT_AUX_LOSSES], aux_index)
  sweep = InnerSweep(lr=inner_lr, steps=inner_steps, objective=objective)
  ep = make_episode(frozen, image, key, spec, mspec)
  loss = lambda meta: metatpt.outer_loss(frozen, meta, ep, spec, mspec, sweep=sweep)
  return jax.grad(loss)({"ctx": frozen.ctx_init, "phi": phi})


def swept_hypergradients(frozen: FrozenCLIP, phi, image: jax.Array, key: jax.Array,
                         spec: metatpt.MetaTPTSpec, mspec: ModelSpec, inner_lr, inner_steps,
                         aux_index=None):
  """`hypergradients` with inner_lr, inner_steps and aux_index traced (`swept_meta_gradient`).

  Jit with spec and mspec static; then sweeping them never recompiles.
  """
  return tuple(swept_meta_gradient(frozen, phi, image, key, spec.replace(order=order), mspec,
                                   inner_lr, inner_steps, aux_index) for order in ORDERS)


def compare(second, first) -> dict:
  """Cosine similarity, norm ratio |second| / |first| and max |second - first| (floats)."""
  a, _ = ravel_pytree(second)
  b, _ = ravel_pytree(first)
  norm_a, norm_b = jnp.linalg.norm(a), jnp.linalg.norm(b)
  return dict(cosine=float(a @ b / (norm_a * norm_b)), norm_ratio=float(norm_a / norm_b),
              max_abs_diff=float(jnp.max(jnp.abs(a - b))))

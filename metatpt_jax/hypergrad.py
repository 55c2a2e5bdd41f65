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
from metatpt_jax.clip.config import CLIPArch, TextArch, VisionArch
from metatpt_jax.frozen_clip import FrozenCLIP, ModelSpec

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
  return tuple(meta_gradient(frozen, phi, image, key, spec.replace(order=order), mspec)
               for order in ORDERS)


# The auxiliary losses a swept gradient can switch between at run time (`aux_index`).
SWEPT_AUX_LOSSES = ("view_kl", "embedding_agreement")


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
  head = None
  if aux_index is not None:
    heads = [losses.get_aux_loss(name) for name in SWEPT_AUX_LOSSES]
    head = lambda view_logits, feats: jax.lax.switch(aux_index, heads, view_logits, feats)

  def step(adapted, index):
    stepped = metatpt.inner_step(frozen, adapted, ctx, ep, spec, mspec, lr=inner_lr, head=head)
    return jax.tree.map(lambda s, a: jnp.where(index < inner_steps, s, a), stepped, adapted), None

  adapted, _ = jax.lax.scan(step, phi, jnp.arange(spec.inner_steps))
  adapted = metatpt.ORDERS[spec.order](phi, adapted)
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
  return tuple(swept_meta_gradient(frozen, phi, image, key, spec.replace(order=order), mspec,
                                   inner_lr, inner_steps, aux_index) for order in ORDERS)


def compare(second, first) -> dict:
  """Cosine similarity, norm ratio |second| / |first| and max |second - first| (floats)."""
  a, _ = ravel_pytree(second)
  b, _ = ravel_pytree(first)
  norm_a, norm_b = jnp.linalg.norm(a), jnp.linalg.norm(b)
  return dict(cosine=float(a @ b / (norm_a * norm_b)), norm_ratio=float(norm_a / norm_b),
              max_abs_diff=float(jnp.max(jnp.abs(a - b))))

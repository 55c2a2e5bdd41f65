"""MetaTPT's hypergradient, second versus first order, for inspection (notebooks, tests).

The hypergradient is grad_{p, phi} L_out(p, phi), where L_out sees the views of the adapted
generator phi'(phi, p) (`metatpt.outer_loss`). Second order differentiates through the inner
update (d phi'/d phi = I - alpha * H_phi, d phi'/d p = -alpha * d^2 L_aux / d phi d p); first
order stops the gradient at phi' (FOMAML). ../shared/docs/METHOD.md section 2, "When second
order matters": the prompt's two gradients differ only if L_aux depends on p.

Everything here is the gradient of the *first* outer step of `metatpt.metatpt_adapt_one_sample`:
the same episode (view-0 feature, generator noise drawn from `key`) and the same starting point
(p = frozen.ctx_init, the given phi).
"""
from __future__ import annotations

from typing import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from metatpt_jax import generator as gen
from metatpt_jax import metatpt
from metatpt_jax.frozen_clip import FrozenCLIP, ModelSpec, encode_images

ORDERS = ("second", "first")


def make_episode(frozen: FrozenCLIP, image: jax.Array, key: jax.Array,
                 spec: metatpt.MetaTPTSpec, mspec: ModelSpec):
  """The per-sample constants of `metatpt_adapt_one_sample`: view-0 feature and noise [K, F]."""
  chex.assert_rank(image, 3)
  feature0 = jax.lax.stop_gradient(encode_images(frozen, image[None], mspec)[0])
  noise = gen.sample_noise(key, spec.n_views - 1).astype(image.dtype)
  return metatpt._Episode(image, feature0, noise)  # pylint: disable=protected-access


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


def swept_outer_loss(frozen: FrozenCLIP, meta, ep, spec: metatpt.MetaTPTSpec, mspec: ModelSpec,
                     inner_lr, inner_steps):
  """`metatpt.outer_loss` (dual loop) with the inner learning rate and step count traced.

  `lax.scan` runs spec.inner_steps inner steps (the most a sweep may ask for) and keeps the
  first `inner_steps` of them, so one compilation serves a whole (inner_lr, inner_steps) grid.
  Equals `metatpt.outer_loss` with those values in the spec (tests/test_hypergrad.py).
  """
  ctx, phi = meta["ctx"], meta["phi"]
  one_step = spec._replace(inner_steps=1, inner_lr=inner_lr, order="second")

  def step(adapted, index):
    stepped = metatpt.inner_update(frozen, adapted, ctx, ep, one_step, mspec)
    return jax.tree.map(lambda s, a: jnp.where(index < inner_steps, s, a), stepped, adapted), None

  adapted, _ = jax.lax.scan(step, phi, jnp.arange(spec.inner_steps))
  if spec.order == "first":  # as metatpt.inner_update: identity Jacobian, no path to p
    adapted = jax.tree.map(lambda w, a: w + jax.lax.stop_gradient(a - w), phi, adapted)
  feats, _ = metatpt._view_features(frozen, adapted, ep, spec, mspec)  # pylint: disable=protected-access
  return metatpt._consistency(frozen, feats, ctx, spec, mspec)  # pylint: disable=protected-access


def swept_hypergradients(frozen: FrozenCLIP, phi, image: jax.Array, key: jax.Array,
                         spec: metatpt.MetaTPTSpec, mspec: ModelSpec, inner_lr, inner_steps):
  """`hypergradients` with inner_lr (scalar) and inner_steps (int <= spec.inner_steps) traced.

  Jit with spec and mspec static; then sweeping inner_lr and inner_steps never recompiles.
  """
  ep = make_episode(frozen, image, key, spec, mspec)
  meta = {"ctx": frozen.ctx_init, "phi": phi}

  def grad(order):
    loss = lambda m: swept_outer_loss(frozen, m, ep, spec._replace(order=order), mspec,
                                      inner_lr, inner_steps)
    return jax.grad(loss)(meta)
  return tuple(grad(order) for order in ORDERS)


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

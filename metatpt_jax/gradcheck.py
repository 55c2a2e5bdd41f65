"""Numerical gradient checks: central differences along random directions (float64).

For checking analytic (meta-)gradients against finite differences in tests and notebooks;
`jax.test_util.check_grads` does the same per argument, these work along one flat direction
of a whole parameter pytree.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree


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

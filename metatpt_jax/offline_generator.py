"""The offline augmenter (a MetaTPT ablation): the generator learned across a stream, then frozen.

`fit_offline_generator` takes one meta-gradient step on phi per unlabeled image (the dual-loop
outer loss, the prompt reset per image); MetaTPT with augment="frozen" then adapts only the
prompt on the fixed phi's views (`metatpt.frozen_generator_objective`). The benchmark fits it on
each domain's first `offline_images` test images (the "metatpt" method's `prepare`).
`metatpt` imports this module, which reads `metatpt`'s names only when called, so the two
import in either order.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax

from metatpt_jax import metatpt, views
from metatpt_jax.frozen_clip import FrozenCLIP, ModelSpec
from metatpt_jax.metatpt_inner import make_episode


def fit_offline_generator(frozen: FrozenCLIP, phi, images: jax.Array, key: jax.Array,
                          spec: metatpt.MetaTPTSpec, mspec: ModelSpec,
                          sources: views.Source | None = None):
  """Learns phi across a stream of unlabeled images [T, S, S, 3]; the prompt resets per image.

  `sources` (a `views.Source` with a leading T axis) are the images the views are cut from.

  Each image contributes one meta-gradient step on phi (dual-loop outer loss); returns the
  final phi, to be used frozen (augment="frozen") on the test stream.
  """
  chex.assert_rank(images, 4)
  opt = optax.adamw(spec.generator_lr, weight_decay=spec.weight_decay)
  online = spec.replace(augment="learned")

  def step(carry, xs):
    phi, opt_state = carry
    image, index, source = xs
    ep = make_episode(frozen, image, jax.random.fold_in(key, index), spec, mspec, source)
    loss_fn = lambda p: metatpt.outer_loss(frozen, {"ctx": frozen.ctx_init, "phi": p}, ep,
                                           online, mspec)
    loss, grads = jax.value_and_grad(loss_fn)(phi)
    updates, opt_state = opt.update(grads, opt_state, phi)
    return (optax.apply_updates(phi, updates), opt_state), loss

  (phi, _), stream_losses = jax.lax.scan(step, (phi, opt.init(phi)),
                                         (images, jnp.arange(images.shape[0]), sources))
  return phi, stream_losses


# Jitted once at import: one compilation cache for every domain and seed of a benchmark run.
FIT_OFFLINE = jax.jit(fit_offline_generator, static_argnums=(4, 5))

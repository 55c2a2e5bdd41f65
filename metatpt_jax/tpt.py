"""TPT (Shu et al., NeurIPS 2022) as a per-sample pure function, exactly as docs/METHOD.md (TPT).
`tune` is the prompt-tuning loop that MetaTPT (`metatpt`) and C-TPT (`ctpt`) share.

Per image: 64 views (the image + 63 random resized crops with flips, cut from the full decoded
image when a `views.Source` is given, as TPT's public code does), image features once without
gradient, the 10% lowest-entropy views chosen at the first step, the entropy of their averaged
prediction minimised over the prompt context with AdamW (lr 5e-3, PyTorch defaults), prediction on
view 0 with the tuned context. Context and optimiser state start afresh for every sample.
"""
from __future__ import annotations

import dataclasses

import chex
import jax
import optax

from metatpt_jax import losses, registry, views
from metatpt_jax.errors import UserError
from metatpt_jax.frozen_clip import (
    FrozenCLIP,
    ModelSpec,
    class_features,
    encode_images,
    image_uses_prompt,
    logits,
)
from metatpt_jax.specs import ConfidentViewsSpec


@dataclasses.dataclass(frozen=True)
class TPTSpec(ConfidentViewsSpec):
  """Static TPT hyper-parameters; defaults are the public implementation's (64 views, 10 %
  kept, random resized crops: `ConfidentViewsSpec`)."""
  steps: int = 1
  lr: float = 5e-3
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.01       # torch.optim.AdamW's default

  def check(self) -> None:
    super().check()
    if self.steps < 1:
      raise UserError(f"TPT needs steps >= 1; got steps={self.steps}.")

  def takes_dataset_views(self) -> bool:
    return True

  def text_loss(self, text: jax.Array) -> jax.Array | None:
    """A term on the class text features [C, E] added to TPT's entropy (None: entropy alone;
    C-TPT's spec adds its dispersion reward)."""
    del text


def make_optimizer(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01):
  """AdamW with torch.optim.AdamW's semantics (decoupled decay scaled by lr)."""
  return optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


def tune(loss_fn, params, steps: int, optimizer, select_once: bool):
  """The prompt-tuning loop of TPT and MetaTPT: `steps` optimiser steps from a fresh state.

  loss_fn(params, keep) -> (loss, (keep, info)): `keep` None asks it to select the confident
  views (the first step always does); with `select_once` (TPT) later steps reuse the first
  step's selection, otherwise each selects anew. Returns (params, (loss, keep, info) of the
  first step).
  """
  params, _, first = tune_from(loss_fn, params, optimizer.init(params), steps, optimizer,
                               select_once)
  return params, first


def tune_from(loss_fn, params, opt_state, steps: int, optimizer, select_once: bool):
  """`tune` from a given optimiser state (MetaTPT's stream carries its generator's): returns
  (params, final optimiser state, (loss, keep, info) of the first step)."""
  def update(params, opt_state, keep):
    (loss, (keep, info)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, keep)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, (loss, keep, info)

  params, opt_state, first = update(params, opt_state, None)

  def step(carry, _):
    params, opt_state = carry
    params, opt_state, (loss, _, _) = update(params, opt_state,
                                             first[1] if select_once else None)
    return (params, opt_state), loss

  (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), None, length=steps - 1)
  return params, opt_state, first


def tune_prompt_on_features(frozen: FrozenCLIP, image_features, spec: TPTSpec, mspec: ModelSpec):
  """TPT's tuning given fixed view features [V, E]: returns (tuned ctx, metrics). The loss is
  the marginal entropy of the confident views (chosen at the first step, as TPT) plus
  `spec.text_loss`."""
  def loss_fn(ctx, keep):
    text = class_features(frozen, ctx, mspec)
    view_logits = logits(frozen, image_features, text)
    keep = losses.select_confident(view_logits, spec.num_keep) if keep is None else keep
    loss = losses.marginal_entropy(view_logits[keep])
    extra = spec.text_loss(text)
    return (loss if extra is None else loss + extra), (keep, view_logits[0])

  opt = make_optimizer(spec.lr, spec.b1, spec.b2, spec.eps, spec.weight_decay)
  ctx, (loss0, keep, zs_logits) = tune(loss_fn, frozen.ctx_init, spec.steps, opt,
                                       select_once=True)
  return ctx, dict(loss=loss0, zero_shot_logits=zs_logits, selected=keep)


def tune_prompt_on_views(frozen: FrozenCLIP, all_views, spec: TPTSpec, mspec: ModelSpec):
  """TPT's tuning when the views' image features depend on the prompt (MaPLe, MMRL): features
  recomputed for the prompt of every step, as TPT on MaPLe does. Selection (first step) from
  every view's features without gradient; the gradient pass encodes the kept views only (the
  others get no gradient from the entropy of the kept ones). Returns (tuned prompt, metrics)."""
  def loss_fn(ctx, keep):
    text = class_features(frozen, ctx, mspec)
    first = None
    if keep is None:
      feats = jax.lax.stop_gradient(encode_images(frozen, all_views, mspec, ctx=ctx))
      first = logits(frozen, feats, jax.lax.stop_gradient(text))
      keep = losses.select_confident(first, spec.num_keep)
      first = first[0]
    kept = encode_images(frozen, all_views[keep], mspec, remat=mspec.remat, ctx=ctx)
    loss = losses.marginal_entropy(logits(frozen, kept, text))
    extra = spec.text_loss(text)
    return (loss if extra is None else loss + extra), (keep, first)

  opt = make_optimizer(spec.lr, spec.b1, spec.b2, spec.eps, spec.weight_decay)
  ctx, (loss0, keep, zs_logits) = tune(loss_fn, frozen.ctx_init, spec.steps, opt,
                                       select_once=True)
  return ctx, dict(loss=loss0, zero_shot_logits=zs_logits, selected=keep)


def tpt_adapt_one_sample(frozen: FrozenCLIP, image: jax.Array, key: jax.Array, spec: TPTSpec,
                         mspec: ModelSpec, source: views.Source | None = None):
  """Adapts the prompt to one image and predicts it.

  Args:
    frozen: CLIP parameters, prompt bank and initial context.
    image: [S, S, 3] float in [0, 1], S = image size of the architecture (already resized and
      centre-cropped, not normalised).
    key: PRNG key of this sample (derive it from the sample's index, not its batch position).
    spec: TPT's settings (or a subclass's, e.g. C-TPT's, which adds a text loss).
    source: the decoded image on a padded canvas; views 1.. are cut from it (default: `image`).
  Returns:
    logits [C] of view 0 with the tuned context, and metrics (loss, zero-shot logits, ...).
  """
  chex.assert_rank(image, 3)
  all_views = spec.make_views(image, key, source)
  if image_uses_prompt(mspec):  # a backbone's visual prompts: features follow the tuned prompt
    ctx, metrics = tune_prompt_on_views(frozen, all_views, spec, mspec)
    final = logits(frozen, encode_images(frozen, all_views[:1], mspec, ctx=ctx),
                   class_features(frozen, ctx, mspec))[0]
    return final, metrics
  feats = jax.lax.stop_gradient(encode_images(frozen, all_views, mspec))
  ctx, metrics = tune_prompt_on_features(frozen, feats, spec, mspec)
  final = logits(frozen, feats[:1], class_features(frozen, ctx, mspec))[0]
  return final, metrics


registry.register(registry.Method("tpt", registry.stateless(tpt_adapt_one_sample),
                                  spec_type=TPTSpec))

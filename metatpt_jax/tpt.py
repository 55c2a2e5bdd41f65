"""TPT (Shu et al., NeurIPS 2022) as a per-sample pure function, exactly as docs/METHOD.md (TPT),
and C-TPT (TPT's loss minus a weighted dispersion of the class text features, `CTPTSpec`).

Per image: 64 views (the image + 63 random resized crops with flips, cut from the full decoded
image when a `views.Source` is given, as TPT's public code does), image features once without
gradient, the 10% lowest-entropy views chosen at the first step, the entropy of their averaged
prediction minimised over the prompt context with AdamW (lr 5e-3, PyTorch defaults), prediction on
view 0 with the tuned context. Context and optimiser state start afresh for every sample.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import chex
import jax
import jax.numpy as jnp
import optax

from metatpt_jax import augmix, losses, views
from metatpt_jax.errors import UserError
from metatpt_jax.frozen_clip import FrozenCLIP, ModelSpec, class_features, encode_images, logits
from metatpt_jax.specs import Spec

# How TPT makes its views: view_kind -> fn(image, key, n_views, source, scale) -> [V, S, S, 3].
VIEW_MAKERS = {
    "random_crop": views.tpt_views,
    "augmix": augmix.augmix_views,   # TPT's choice for the fine-grained data sets
}


@dataclasses.dataclass(frozen=True)
class TPTSpec(Spec):
  """Static TPT hyper-parameters; defaults are the public implementation's."""
  n_views: int = 64
  selection_ratio: float = 0.1
  steps: int = 1
  lr: float = 5e-3
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.01       # torch.optim.AdamW's default
  view_kind: Literal["random_crop", "augmix"] = "random_crop"   # a key of VIEW_MAKERS
  crop_scale: tuple = (0.08, 1.0)

  @property
  def num_keep(self) -> int:
    return int(self.n_views * self.selection_ratio)

  def check(self) -> None:
    if self.steps < 1 or self.num_keep < 1:
      raise UserError(f"TPT needs steps >= 1 and n_views * selection_ratio >= 1; got steps="
                      f"{self.steps}, n_views={self.n_views}, selection_ratio="
                      f"{self.selection_ratio}.")


def make_optimizer(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01):
  """AdamW with torch.optim.AdamW's semantics (decoupled decay scaled by lr)."""
  return optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


def make_views(image, key, spec, source: views.Source | None = None):
  """View 0 = `image`; views 1.. cut from `source` (default: the image itself). `spec`: any
  spec with `n_views`, `view_kind` and `crop_scale` (TPTSpec, specs.ViewsSpec and its kin)."""
  return VIEW_MAKERS[spec.view_kind](image, key, spec.n_views, source, scale=spec.crop_scale)


def tune_prompt_on_features(frozen: FrozenCLIP, image_features, spec: TPTSpec, mspec: ModelSpec,
                            text_loss=None):
  """TPT's inner loop given fixed view features [V, E]: returns (tuned ctx, metrics).

  text_loss(class text features [C, E]) -> scalar, added to the entropy (C-TPT's dispersion
  term); None: TPT's loss alone."""
  opt = make_optimizer(spec.lr, spec.b1, spec.b2, spec.eps, spec.weight_decay)

  def loss_fn(ctx, keep):
    text = class_features(frozen, ctx, mspec)
    view_logits = logits(frozen, image_features, text)
    # Selection happens once, at the first step (keep is None there).
    keep = losses.select_confident(view_logits, spec.num_keep) if keep is None else keep
    loss = losses.marginal_entropy(view_logits[keep])
    if text_loss is not None:
      loss = loss + text_loss(text)
    return loss, (keep, view_logits[0])

  def update(ctx, opt_state, grad):
    updates, opt_state = opt.update(grad, opt_state, ctx)
    return optax.apply_updates(ctx, updates), opt_state

  # The first step also chooses the confident views; later steps reuse that choice.
  ctx = frozen.ctx_init
  (loss0, (keep, zs_logits)), grad = jax.value_and_grad(loss_fn, has_aux=True)(ctx, None)
  ctx, opt_state = update(ctx, opt.init(ctx), grad)

  def step(carry, _):
    ctx, opt_state = carry
    (loss, _), grad = jax.value_and_grad(loss_fn, has_aux=True)(ctx, keep)
    return update(ctx, opt_state, grad), loss

  (ctx, _), _ = jax.lax.scan(step, (ctx, opt_state), None, length=spec.steps - 1)
  return ctx, dict(loss=loss0, zero_shot_logits=zs_logits, selected=keep)


def tpt_adapt_one_sample(frozen: FrozenCLIP, image: jax.Array, key: jax.Array, spec: TPTSpec,
                         mspec: ModelSpec, source: views.Source | None = None):
  """Adapts the prompt to one image and predicts it.

  Args:
    frozen: CLIP parameters, prompt bank and initial context.
    image: [S, S, 3] float in [0, 1], S = image size of the architecture (already resized and
      centre-cropped, not normalised).
    key: PRNG key of this sample (derive it from the sample's index, not its batch position).
    source: the decoded image on a padded canvas; views 1.. are cut from it (default: `image`).
  Returns:
    logits [C] of view 0 with the tuned context, and metrics (loss, zero-shot logits, ...).
  """
  chex.assert_rank(image, 3)
  all_views = make_views(image, key, spec, source)
  feats = jax.lax.stop_gradient(encode_images(frozen, all_views, mspec))
  text_loss = TEXT_LOSSES[type(spec)](spec)
  ctx, metrics = tune_prompt_on_features(frozen, feats, spec, mspec, text_loss)
  final = logits(frozen, feats[:1], class_features(frozen, ctx, mspec))[0]
  return final, metrics


@dataclasses.dataclass(frozen=True)
class CTPTSpec(TPTSpec):
  """C-TPT (Yoon et al., ICLR 2024): TPT's settings plus the weight of the text-feature
  dispersion reward (50: the authors' ImageNet and fine-grained value; 20 for ImageNet-A/-V2/
  -R/-Sketch)."""
  dispersion_weight: float = 50.0


def text_feature_dispersion(text: jax.Array) -> jax.Array:
  """C-TPT's ATFD: mean L2 distance of unit class text features [C, E] to their centroid."""
  return jnp.mean(jnp.linalg.norm(text - jnp.mean(text, axis=0), axis=-1))


# Spec type -> fn(spec) -> the text loss TPT's entropy is joined with (None: entropy alone).
TEXT_LOSSES = {
    TPTSpec: lambda spec: None,
    CTPTSpec: lambda spec: lambda text: -spec.dispersion_weight * text_feature_dispersion(text),
}

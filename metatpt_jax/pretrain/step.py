"""The pretraining state, optimiser, class-aware contrastive loss and jitted train step."""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import ml_collections
import optax

from metatpt_jax.clip import model
from metatpt_jax.clip.config import CLIPArch
from metatpt_jax.image_ops import clip_normalize
from metatpt_jax.pretrain import artwork, augment


class TrainState(NamedTuple):
  step: jax.Array  # int32 scalar
  params: dict
  opt_state: optax.OptState


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW with linear warmup and cosine decay; weight decay on Dense/Conv kernels only
  (embeddings, norms and the logit scale keep their scale, as in CLIP)."""
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, config.lr, config.warmup_steps, max(config.total_steps, config.warmup_steps + 1),
      end_value=config.lr * config.final_lr_fraction)
  decay_mask = lambda params: jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) == "kernel", params)
  return optax.chain(
      optax.clip_by_global_norm(config.grad_clip),
      optax.adamw(schedule, b1=0.9, b2=0.98, eps=1e-6, weight_decay=config.weight_decay,
                  mask=decay_mask))


def init_state(key: jax.Array, arch: CLIPArch, config: ml_collections.ConfigDict,
               tx: optax.GradientTransformation) -> TrainState:
  params = model.init_params(key, arch)
  # CLIP's temperature init 0.07: the released value ln(100) is where training *ends*.
  params["logit_scale"] = jnp.asarray(config.logit_scale_init, jnp.float32)
  return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))


TARGETS = ("paired", "class_uniform", "class_any")


def contrastive_loss(logits: jax.Array, labels: jax.Array, caption_labels: jax.Array,
                     target: str):
  """Symmetric contrastive loss between images and captions.

  Args:
    logits: [B, K] scaled cosine similarities, images x captions.
    labels: [B] class of each image.
    caption_labels: [K] class of each caption (K = B and paired for "paired").
    target: "paired": only the paired caption matches (plain CLIP). "class_uniform": every
      caption of the image's class matches, cross-entropy to the uniform distribution over
      matches. "class_any": -log of the total probability on matches (multi-positive), which
      does not ask same-class items to score equally, so the temperature is free to sharpen
      (a uniform target over ~13 same-class images per caption holds it near 14).
  Returns:
    (loss scalar, accuracy scalar): accuracy = the best caption has the image's class.
  """
  chex.assert_rank(logits, 2)
  if target not in TARGETS:
    raise ValueError(f"Unknown contrastive target {target!r}; valid: {TARGETS}.")
  same = labels[:, None] == caption_labels[None, :]
  matches = jnp.eye(*logits.shape, dtype=bool) if target == "paired" else same

  def one_direction(scores, positives):  # rows without any match (absent class) are skipped
    counts = positives.sum(axis=1)
    log_probs = jax.nn.log_softmax(scores, axis=1)
    if target == "class_any":
      # A row without positives would be logsumexp(all -inf): NaN gradients even when masked.
      safe = positives | (counts == 0)[:, None]
      per_row = -jax.nn.logsumexp(jnp.where(safe, log_probs, -jnp.inf), axis=1)
    else:
      per_row = -(positives * log_probs).sum(1) / jnp.maximum(counts, 1)
    return jnp.sum(per_row * (counts > 0)) / jnp.maximum(jnp.sum(counts > 0), 1)

  loss = (one_direction(logits, matches) + one_direction(logits.T, matches.T)) / 2
  accuracy = same[jnp.arange(logits.shape[0]), jnp.argmax(logits, axis=1)].mean()
  return loss, accuracy


def _loss_fn(params, images, batch, arch, target):
  image_features = model.encode_image(params, images, arch)
  text_features = model.encode_text(params, batch["token_ids"], arch)
  logits = model.clip_logits(params, image_features, text_features)
  return contrastive_loss(logits, batch["labels"], batch["caption_labels"], target)


def train_step(state: TrainState, batch: dict, key: jax.Array, *, arch: CLIPArch,
               tx: optax.GradientTransformation, config: ml_collections.ConfigDict):
  """One AdamW step on an augmented batch.

  Args:
    state: TrainState.
    batch: images [B, S, S, 3] uint8, labels [B] int32, token_ids [K, L] int32,
      caption_labels [K] int32 (`pairs.sample_batch`).
    key: PRNG key for this step's augmentations.
  Returns:
    (new state, metrics dict of scalars).
  """
  chex.assert_rank(batch["images"], 4)
  images = batch["images"].astype(jnp.float32) / 255.0
  keys = jax.random.split(key, images.shape[0])
  if images.shape[-1] == 4:  # pretraining v3: artwork composed with its described look
    others = None
    if artwork.uses_collage(config.compose):  # four other pictures of the batch per image
      others = jnp.stack([jnp.roll(images, shift, 0) for shift in range(1, 5)], 1)
    images = jax.vmap(artwork.compose, in_axes=(0, 0, 0, None, 0))(images, keys, batch["ops"],
                                                                   config.compose, others)
  elif "ops" in batch:  # pretraining v2: one described transformation per image
    images = jax.vmap(augment.apply_described, in_axes=(0, 0, 0, None, None))(
        images, keys, batch["ops"], config.augment, config.described)
  else:
    images = jax.vmap(augment.augment_image, in_axes=(0, 0, None))(images, keys, config.augment)
  grad_fn = jax.value_and_grad(_loss_fn, has_aux=True)
  (loss, accuracy), grads = grad_fn(state.params, clip_normalize(images), batch, arch,
                                    config.contrastive_target)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  # CLIP clips the temperature at 100 so the logits cannot blow up.
  params["logit_scale"] = jnp.minimum(params["logit_scale"], config.logit_scale_max)
  metrics = dict(loss=loss, accuracy=accuracy, logit_scale=jnp.exp(params["logit_scale"]),
                 grad_norm=optax.tree.norm(grads))
  return TrainState(state.step + 1, params, opt_state), metrics


def jit_train_step(arch: CLIPArch, tx, config: ml_collections.ConfigDict):
  """`train_step` jitted with the state donated; arch, optimiser and config are fixed."""
  return jax.jit(functools.partial(train_step, arch=arch, tx=tx, config=config),
                 donate_argnums=(0,))


def default_logit_scale_init() -> float:
  return math.log(1 / 0.07)

"""The frozen side of test-time tuning: CLIP parameters, the class prompt bank, the initial context.

`FrozenCLIP` is a pytree passed explicitly into every jitted step (never closed over, so jit does
not bake the weights in as constants). `ModelSpec` holds the static parts (architecture, image
normalisation, mixed-precision policy, rematerialisation) and is hashable.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from metatpt_jax import prompts
from metatpt_jax.clip import model as clip_model
from metatpt_jax.clip.config import CLIPArch
from metatpt_jax.image_ops import clip_normalize


class FrozenCLIP(NamedTuple):
  params: Any                 # CLIP parameter pytree
  bank: prompts.PromptBank    # class-name prompts around the context
  ctx_init: jax.Array         # [n_ctx, W] context every sample starts from (episodic reset)


class ModelSpec(NamedTuple):
  arch: CLIPArch
  compute_dtype: Any = jnp.float32   # bf16 on accelerators: matmuls only, norms/softmax stay fp32
  remat: bool = False                # rematerialise encoder blocks on the backward path
  class_chunk: int = 0               # text tower over this many classes at a time (0: all)


def encode_images(frozen: FrozenCLIP, images: jax.Array, mspec: ModelSpec,
                  remat: bool = False) -> jax.Array:
  """Unit-norm image features [V, E] of [V, S, S, 3] images in [0, 1]."""
  feats = clip_model.encode_image(frozen.params, clip_normalize(images), mspec.arch,
                                  remat=remat, dtype=mspec.compute_dtype)
  return clip_model.normalize(feats)


def class_features(frozen: FrozenCLIP, ctx: jax.Array, mspec: ModelSpec) -> jax.Array:
  """Unit-norm class text features [C, E] for context `ctx`."""
  return prompts.text_features(frozen.params, mspec.arch, frozen.bank, ctx,
                               dtype=mspec.compute_dtype, class_chunk=mspec.class_chunk)


def logits(frozen: FrozenCLIP, image_features: jax.Array, text_feats: jax.Array) -> jax.Array:
  """exp(logit_scale) * cosine similarities: [V, E] x [C, E] -> [V, C] (inputs unit-norm)."""
  return jnp.exp(frozen.params["logit_scale"]) * image_features @ text_feats.T

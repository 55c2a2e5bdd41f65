"""The frozen side of test-time tuning: CLIP parameters, the class prompt bank, the initial context.

`FrozenCLIP` is a pytree passed explicitly into every jitted step (never closed over, so jit does
not bake the weights in as constants). `ModelSpec` holds the static parts (architecture, image
normalisation, mixed-precision policy, rematerialisation, prompt backbone) and is hashable.

The prompt a method tunes ("ctx" throughout) is CLIP's context array [n_ctx, W] when
`ModelSpec.backbone` is None (plain CLIP / CoOp, the original path), else the dict of the
backbone's adapted tensors (`backbones`: MaPLe, MMRL), the others held in
`FrozenCLIP.prompt_fixed`. Image features take the prompt too: a backbone whose visual tokens
come from it (`image_uses_prompt`) recomputes them for the prompt being tuned.
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
  ctx_init: Any               # the prompt every sample starts from (episodic reset): [n_ctx, W],
                              # or a backbone's adapted tensors {name: array}
  prompt_fixed: Any = None    # a backbone's prompt tensors that are not adapted ({} or None)


class ModelSpec(NamedTuple):
  arch: CLIPArch
  compute_dtype: Any = jnp.float32   # bf16 on accelerators: matmuls only, norms/softmax stay fp32
  remat: bool = False                # rematerialise encoder blocks on the backward path
  class_chunk: int = 0               # text tower over this many classes at a time (0: all)
  backbone: Any = None               # a `backbones` spec (MaPLe, MMRL, ...); None: CLIP + context


def image_uses_prompt(mspec: ModelSpec) -> bool:
  """Whether image features depend on the tuned prompt (then no method may compute them once
  before tuning)."""
  return mspec.backbone is not None and mspec.backbone.image_uses_prompt


def full_prompt(frozen: FrozenCLIP, ctx) -> dict:
  """A backbone's whole prompt: the tuned tensors `ctx` over the fixed ones."""
  return {**(frozen.prompt_fixed or {}), **ctx}


def encode_images(frozen: FrozenCLIP, images: jax.Array, mspec: ModelSpec,
                  remat: bool = False, ctx=None) -> jax.Array:
  """Unit-norm image features [V, E] of [V, S, S, 3] images in [0, 1]; `ctx`: the prompt they
  are seen under when the backbone's visual tokens depend on it (default: the initial one)."""
  if image_uses_prompt(mspec):
    prompt = full_prompt(frozen, frozen.ctx_init if ctx is None else ctx)
    return mspec.backbone.image_features(frozen.params, mspec.arch, prompt,
                                         clip_normalize(images), dtype=mspec.compute_dtype,
                                         remat=remat)
  feats = clip_model.encode_image(frozen.params, clip_normalize(images), mspec.arch,
                                  remat=remat, dtype=mspec.compute_dtype)
  return clip_model.normalize(feats)


def class_features(frozen: FrozenCLIP, ctx, mspec: ModelSpec) -> jax.Array:
  """Unit-norm class text features [C, E] for the prompt `ctx`."""
  if mspec.backbone is not None:
    return mspec.backbone.text_features(frozen.params, mspec.arch, frozen.bank,
                                        full_prompt(frozen, ctx), dtype=mspec.compute_dtype,
                                        class_chunk=mspec.class_chunk)
  return prompts.text_features(frozen.params, mspec.arch, frozen.bank, ctx,
                               dtype=mspec.compute_dtype, class_chunk=mspec.class_chunk)


def logits(frozen: FrozenCLIP, image_features: jax.Array, text_feats: jax.Array) -> jax.Array:
  """exp(logit_scale) * cosine similarities: [V, E] x [C, E] -> [V, C] (inputs unit-norm; a
  backbone with its own scale sets `logit_scale` in `frozen.params`: `clip_params`)."""
  return jnp.exp(frozen.params["logit_scale"]) * image_features @ text_feats.T

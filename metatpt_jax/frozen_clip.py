"""The frozen side of test-time tuning: CLIP parameters, the class prompt bank, the initial context.

`FrozenCLIP` is a pytree passed explicitly into every jitted step (never closed over, so jit does
not bake the weights in as constants). `ModelSpec` holds the static parts (architecture, image
normalisation, mixed-precision policy, rematerialisation) and is hashable.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

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


def encode_images(frozen: FrozenCLIP, images: jax.Array, spec: ModelSpec,
                  remat: bool = False) -> jax.Array:
  """Unit-norm image features [V, E] of [V, S, S, 3] images in [0, 1]."""
  feats = clip_model.encode_image(frozen.params, clip_normalize(images), spec.arch,
                                  remat=remat, dtype=spec.compute_dtype)
  return clip_model.normalize(feats)


def class_features(frozen: FrozenCLIP, ctx: jax.Array, spec: ModelSpec) -> jax.Array:
  """Unit-norm class text features [C, E] for context `ctx`."""
  return prompts.text_features(frozen.params, spec.arch, frozen.bank, ctx,
                               dtype=spec.compute_dtype)


def logits(frozen: FrozenCLIP, image_features: jax.Array, text_feats: jax.Array) -> jax.Array:
  """exp(logit_scale) * cosine similarities: [V, E] x [C, E] -> [V, C] (inputs unit-norm)."""
  return jnp.exp(frozen.params["logit_scale"]) * image_features @ text_feats.T


def check_images(images, image_size: int, batched: bool) -> None:
  """Rejects malformed or non-finite images on the host, before any compiled work starts."""
  arr = np.asarray(images)
  want = f"[{'N, ' if batched else ''}{image_size}, {image_size}, 3] float in [0, 1]"
  if arr.ndim != (4 if batched else 3) or arr.shape[-3:] != (image_size, image_size, 3):
    raise ValueError(f"images have shape {arr.shape}; expected {want} (resize and centre-crop "
                     "with metatpt_jax.clip.preprocess first).")
  if not np.issubdtype(arr.dtype, np.floating):
    raise TypeError(f"images have dtype {arr.dtype}; expected {want} (divide uint8 by 255).")
  bad = ~np.isfinite(arr)
  if bad.any():
    where = np.argwhere(bad.reshape(arr.shape[0], -1).any(-1))[:, 0] if batched else []
    raise ValueError(f"images contain {int(bad.sum())} NaN/Inf values"
                     + (f" (samples {where[:10].tolist()})" if batched else "")
                     + "; nothing was run. Fix or drop those images.")

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
  class_chunk: int = 0               # text tower over this many classes at a time (0: all)


def encode_images(frozen: FrozenCLIP, images: jax.Array, spec: ModelSpec,
                  remat: bool = False) -> jax.Array:
  """Unit-norm image features [V, E] of [V, S, S, 3] images in [0, 1]."""
  feats = clip_model.encode_image(frozen.params, clip_normalize(images), spec.arch,
                                  remat=remat, dtype=spec.compute_dtype)
  return clip_model.normalize(feats)


def class_features(frozen: FrozenCLIP, ctx: jax.Array, spec: ModelSpec) -> jax.Array:
  """Unit-norm class text features [C, E] for context `ctx`."""
  return prompts.text_features(frozen.params, spec.arch, frozen.bank, ctx,
                               dtype=spec.compute_dtype, class_chunk=spec.class_chunk)


def logits(frozen: FrozenCLIP, image_features: jax.Array, text_feats: jax.Array) -> jax.Array:
  """exp(logit_scale) * cosine similarities: [V, E] x [C, E] -> [V, C] (inputs unit-norm)."""
  return jnp.exp(frozen.params["logit_scale"]) * image_features @ text_feats.T


def _host_pieces(images):
  """(first sample index, host array) for each piece this process holds.

  A global jax.Array spanning several processes cannot be fetched whole; each process checks
  the shards it can address.
  """
  if isinstance(images, jax.Array):
    return [(s.index[0].start or 0 if s.index else 0, np.asarray(s.data))
            for s in images.addressable_shards if s.replica_id == 0]
  return [(0, np.asarray(images))]


def check_images(images, image_size: int, batched: bool) -> None:
  """Rejects malformed or non-finite images on the host, before any compiled work starts."""
  shape, dtype = tuple(np.shape(images)), np.dtype(getattr(images, "dtype", np.float64))
  want = f"[{'N, ' if batched else ''}{image_size}, {image_size}, 3] float in [0, 1]"
  if len(shape) != (4 if batched else 3) or shape[-3:] != (image_size, image_size, 3):
    raise ValueError(f"images have shape {shape}; expected {want} (resize and centre-crop "
                     "with metatpt_jax.clip.preprocess first).")
  if not np.issubdtype(dtype, np.floating):
    raise TypeError(f"images have dtype {dtype}; expected {want} (divide uint8 by 255).")
  for offset, arr in _host_pieces(images):
    arr = arr if batched else arr[None]
    bad = ~np.isfinite(arr).reshape(arr.shape[0], -1).all(-1)
    if bad.any():
      where = (np.flatnonzero(bad)[:10] + offset).tolist()
      raise ValueError(f"images contain NaN/Inf values (samples {where}); nothing was run. "
                       "Fix or drop those images.")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -1e-3 or hi > 1 + 1e-3:  # bilinear/bicubic resampling may overshoot by a hair
      raise ValueError(f"image values span [{lo:.3g}, {hi:.3g}]; expected {want} (for 0-255 "
                       "images divide by 255; pass unnormalised images, CLIP normalisation is "
                       "applied inside).")

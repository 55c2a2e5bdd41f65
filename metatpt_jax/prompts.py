"""CoOp-style prompt learner: learnable context vectors in front of each class name.

Text for class c is [SOT, ctx_1..ctx_n, <class-name tokens>, ".", EOT] as in CoOp and TPT
(as TPT's public code builds it). The fixed parts (SOT prefix, class-name suffix, EOT
positions) are a `PromptBank` of arrays built once on the host; the context is a plain
[n_ctx, width] array, the only thing test-time tuning changes.
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from metatpt_jax.clip import model as clip_model
from metatpt_jax.clip import shared_prefix
from metatpt_jax.clip.config import CLIPArch

PLACEHOLDER = "X"  # stands in for the context tokens when tokenising prompts, as in CoOp


class PromptBank(NamedTuple):
  """Frozen token embeddings around the learnable context, for C classes.

  prefix: [C, 1, W] embedding of SOT.  suffix: [C, L - 1 - n_ctx, W] class name, ".", EOT, pad.
  eot_indices: [C] int32 position of EOT in the full sequence.

  L is the longest prompt's EOT position + 1, not the tokenizer's 77: the text tower's attention
  is causal and its features are read at EOT, so positions after the last EOT cannot change any
  class's feature (exact; ImageNet's 1000 prompts need 18 positions, ImageNet-R's 200 need 12).
  """
  prefix: jax.Array
  suffix: jax.Array
  eot_indices: jax.Array


def _tokenizer(tokenizer):
  if tokenizer is not None:
    return tokenizer
  from metatpt_jax.clip.tokenizer import default_tokenizer
  return default_tokenizer()


def build_prompt_bank(clip_params, arch: CLIPArch, class_names: Sequence[str], n_ctx: int,
                      tokenizer=None, template: str = "{}.") -> PromptBank:
  """Tokenises "X X X X {class}." for every class and embeds the fixed parts.

  template: the text after the context, "{}" the class name (MaPLe: "of a {}.", whose context
  replaces "a photo" of "a photo of a {}."; MMRL, no context: "a photo of a {}.").
  """
  if not class_names:
    raise ValueError("class_names is empty: pass at least one class name.")
  if "{}" not in template:
    raise ValueError(f"Prompt template {template!r} has no '{{}}' for the class name.")
  tok = _tokenizer(tokenizer)
  texts = [" ".join([PLACEHOLDER] * n_ctx + [template.format(name)]) for name in class_names]
  ids = np.asarray(tok(texts, context_length=arch.text.context_length, truncate=False))
  eot = np.asarray(clip_model.eot_positions(jnp.asarray(ids))).astype(np.int32)
  ids = ids[:, :int(eot.max()) + 1]  # nothing after the last EOT reaches a feature (causal)
  emb = clip_model.embed_tokens(clip_params, jnp.asarray(ids))
  return PromptBank(prefix=emb[:, :1], suffix=emb[:, 1 + n_ctx:], eot_indices=jnp.asarray(eot))


def init_context(clip_params, arch: CLIPArch, *, n_ctx: int = 4, init: str | None = "a photo of a",
                 key: jax.Array | None = None, tokenizer=None) -> jax.Array:
  """Initial context vectors [n_ctx, W].

  Args:
    init: words whose token embeddings initialise the context (CoOp/TPT: "a photo of a"; its
      token count must equal n_ctx), or None for N(0, 0.02^2) random vectors (needs `key`), or a
      path to saved vectors: a `.npz` with a `ctx` array, or a CoOp checkpoint (`.pt`, `.pth`,
      `.tar`, Dassl's `model.pth.tar-50`; `ctx` or `prompt_learner.ctx` in its state dict;
      torch imported lazily).
  """
  width = arch.text.width
  if init is None:
    if key is None:
      raise ValueError("Random context init needs a PRNG key: pass key=jax.random.key(seed).")
    return 0.02 * jax.random.normal(key, (n_ctx, width))  # CoOp's init std
  if is_context_file(init):
    ctx = load_context(init)
  else:
    ids = np.asarray(_tokenizer(tokenizer)([init], context_length=arch.text.context_length))[0]
    n_words = int(np.argmax(ids == clip_model.EOT_TOKEN_ID)) - 1
    if n_words != n_ctx:
      raise ValueError(f"Context init {init!r} has {n_words} tokens but n_ctx={n_ctx}; set "
                       f"n_ctx={n_words} or choose other words.")
    ctx = clip_model.embed_tokens(clip_params, jnp.asarray(ids[1:1 + n_ctx]))
  ctx = jnp.asarray(ctx, jnp.float32)
  if ctx.shape != (n_ctx, width):
    raise ValueError(f"Saved context {init!r} has shape {ctx.shape}; this model needs "
                     f"({n_ctx}, {width}). Class-specific (3-D) contexts are not supported.")
  return ctx


# A saved context: `.npz`, or a torch file (`.pt`, `.pth`, `.tar`, and Dassl's numbered
# checkpoints `model.pth.tar-50`).
_CONTEXT_FILE = re.compile(r"\.(npz|pt|pth|tar)(-\d+)?$")


def is_context_file(init: str) -> bool:
  """Whether `init` names saved context vectors rather than words."""
  return bool(_CONTEXT_FILE.search(init))


def load_context(path: str) -> np.ndarray:
  """Reads context vectors from a `.npz` (key `ctx`) or a CoOp checkpoint file."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"Context file {path!r} does not exist.")
  if path.endswith(".npz"):
    with np.load(path) as data:
      if "ctx" not in data:
        raise KeyError(f"{path!r} has no 'ctx' array (found {sorted(data.files)}).")
      return data["ctx"]
  import torch  # only for CoOp's torch checkpoints
  state = torch.load(path, map_location="cpu", weights_only=False)
  state = state.get("state_dict", state)
  for key in ("prompt_learner.ctx", "ctx"):
    if key in state:
      return state[key].float().numpy()
  raise KeyError(f"{path!r} has no 'prompt_learner.ctx' or 'ctx' tensor.")


def text_features(clip_params, arch: CLIPArch, bank: PromptBank, ctx: jax.Array, *,
                  dtype=jnp.float32, class_chunk: int = 0) -> jax.Array:
  """Unit-norm class text features [C, E] for context `ctx` [n_ctx, W].

  SOT and the context are the same for every class, so they run through the text tower once
  (`shared_prefix`; exact); `class_chunk` > 0 runs the classes in rematerialised chunks.
  """
  chex.assert_rank(ctx, 2)
  prefix = jnp.concatenate([bank.prefix[0], ctx.astype(bank.prefix.dtype)], axis=0)
  feats = shared_prefix.encode_text_shared_prefix(clip_params, prefix, bank.suffix,
                                                  bank.eot_indices, arch, dtype=dtype,
                                                  class_chunk=class_chunk)
  return clip_model.normalize(feats)


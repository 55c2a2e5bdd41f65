"""The text tower for C prompts that share their first P tokens, computing those P once.

Prompt-tuning prompts are [SOT, ctx_1..ctx_n, class tokens, ".", EOT]: the first 1 + n_ctx
positions are the same for every class. CLIP's text attention is causal, so the hidden states
of those positions, in every layer, depend only on themselves: they are computed once, [P, W],
and each class's remaining positions attend to them (keys and values broadcast) and to their own
earlier positions. The features equal `model.encode_text_embeddings` on the concatenated prompts
up to float round-off (tests/test_text_tower.py), for (C - 1) * P fewer token positions per
layer, forward and backward. Classes can also run in chunks under `jax.checkpoint` and
`lax.map`, so the backward keeps one chunk's activations (1000-class prompt banks).

Parameters are CLIP's (`model.CLIP`'s pytree) and every layer is the same Flax module applied
to them, so numerics follow the model's mixed-precision policy.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from metatpt_jax.clip import model as clip_model
from metatpt_jax.clip.config import CLIPArch


def _dense(p, x, dtype):
  return nn.Dense(p["kernel"].shape[-1], use_bias="bias" in p, dtype=dtype).apply(
      {"params": p}, x)


def _norm(p, x, dtype):
  return clip_model._layer_norm(None, dtype).apply({"params": p}, x)


def _heads(p, x, heads, dtype):  # p: a layer's self_attn parameters
  """q (scaled), k, v of x [..., L, W] as [..., L, heads, W / heads]."""
  split = lambda t: t.reshape(t.shape[:-1] + (heads, t.shape[-1] // heads))
  q = split(_dense(p["q_proj"], x, dtype))
  return q * q.shape[-1] ** -0.5, split(_dense(p["k_proj"], x, dtype)), split(
      _dense(p["v_proj"], x, dtype))


def _causal_scores(q, k, wide):
  scores = jnp.einsum("...qhd,...khd->...hqk", q, k).astype(wide)
  n = scores.shape[-1]
  return jnp.where(jnp.tril(jnp.ones((n, n), bool)), scores, jnp.finfo(wide).min)


def _mlp(p, x, activation, dtype):
  h = clip_model._activation(activation)(_dense(p["fc1"], x, dtype))
  return _dense(p["fc2"], h, dtype)


def _finish_block(p, x, attended, arch, dtype):
  """x + out_proj(attended); then the MLP half of the pre-LN block."""
  merged = attended.reshape(attended.shape[:-2] + (-1,))
  x = x + _dense(p["self_attn"]["out_proj"], merged, dtype)
  return x + _mlp(p["mlp"], _norm(p["layer_norm2"], x, dtype), arch.activation, dtype)


def _prefix_layer(p, x_p, arch, dtype):
  """One layer over the prefix [P, W] alone -> (next x_p, this layer's prefix keys, values)."""
  wide = clip_model._wide(dtype)
  q, k, v = _heads(p["self_attn"], _norm(p["layer_norm1"], x_p, dtype), arch.text.heads, dtype)
  w = jax.nn.softmax(_causal_scores(q, k, wide), axis=-1).astype(dtype)
  return _finish_block(p, x_p, jnp.einsum("hqk,khd->qhd", w, v), arch, dtype), k, v


def _suffix_layer(p, x_s, k_p, v_p, arch, dtype):
  """One layer over suffixes [C, S, W] that also attend to every prefix key/value [P, h, d]."""
  wide = clip_model._wide(dtype)
  q, k, v = _heads(p["self_attn"], _norm(p["layer_norm1"], x_s, dtype), arch.text.heads, dtype)
  to_prefix = jnp.einsum("cqhd,khd->chqk", q, k_p).astype(wide)
  w = jax.nn.softmax(jnp.concatenate([to_prefix, _causal_scores(q, k, wide)], -1),
                     axis=-1).astype(dtype)
  n_p = k_p.shape[0]
  attended = (jnp.einsum("chqk,khd->cqhd", w[..., :n_p], v_p)
              + jnp.einsum("chqk,ckhd->cqhd", w[..., n_p:], v))
  return _finish_block(p, x_s, attended, arch, dtype)


def _encode_suffixes(params, prefix_kv, suffix, suffix_eot, arch, dtype):
  """Features [C, E] of suffixes [C, S, W] given the prefix's keys and values per layer."""
  t = params["text_model"]
  x = suffix.astype(dtype)
  for i in range(arch.text.layers):
    x = _suffix_layer(t["encoder"][f"layers_{i}"], x, prefix_kv[0][i], prefix_kv[1][i], arch,
                      dtype)
  pooled = jnp.take_along_axis(x, suffix_eot[:, None, None], axis=1)[:, 0]
  pooled = _norm(t["final_layer_norm"], pooled, dtype)
  return _dense(params["text_projection"], pooled, dtype).astype(clip_model._wide(dtype))


def encode_text_shared_prefix(params, prefix: jax.Array, suffix: jax.Array,
                              eot_indices: jax.Array, arch: CLIPArch, *,
                              dtype=jnp.float32, class_chunk: int = 0,
                              prompts=None) -> jax.Array:
  """Text embeddings [C, E] (before normalisation) of the prompts [prefix; suffix_c].

  Args:
    prefix: [P, W] token embeddings shared by every prompt (SOT and the context).
    suffix: [C, S, W] the rest of each prompt; P + S <= arch.text.context_length.
    eot_indices: [C] int, each prompt's EOT position in the whole prompt (>= P).
    class_chunk: 0 runs all classes at once; n > 0 runs n classes at a time, each chunk
      rematerialised on the backward pass (the last chunk padded by repeating a class).
    prompts: deep prompt tokens before blocks (`layer_prompts.LayerPrompts`), written or
      inserted inside the shared prefix (so still shared: MaPLe's, MMRL's).
  """
  t = params["text_model"]
  n_p, n_s = prefix.shape[0], suffix.shape[1]
  pos = t["position_embedding"][:n_p + n_s]
  x_p = (prefix + pos[:n_p]).astype(dtype)
  if prompts is not None and not 0 <= prompts.position <= n_p:
    raise ValueError(f"Deep prompt tokens at position {prompts.position} are outside the shared "
                     f"prefix of {n_p} tokens; use model.encode_text_embeddings.")
  keys, values = [], []  # per layer: an insertion makes the later layers' prefix longer
  for i in range(arch.text.layers):  # the prefix once; its last layer's output is never read
    if prompts is not None:
      x_p = prompts.before_block(x_p, i)
    x_p, k, v = _prefix_layer(t["encoder"][f"layers_{i}"], x_p, arch, dtype)
    keys.append(k)
    values.append(v)
  prefix_kv = (keys, values)
  suffix = suffix + pos[n_p:]
  suffix_eot = (eot_indices - n_p).astype(jnp.int32)
  encode = lambda s, e: _encode_suffixes(params, prefix_kv, s, e, arch, dtype)
  n_cls = suffix.shape[0]
  if not class_chunk or class_chunk >= n_cls:
    return encode(suffix, suffix_eot)
  n = -(-n_cls // class_chunk)
  rows = jnp.minimum(jnp.arange(n * class_chunk), n_cls - 1)  # pad by repeating the last class
  chunks = (suffix[rows].reshape((n, class_chunk) + suffix.shape[1:]),
            suffix_eot[rows].reshape(n, class_chunk))
  feats = jax.lax.map(jax.checkpoint(lambda xs: encode(*xs)), chunks)
  return feats.reshape(n * class_chunk, -1)[:n_cls]

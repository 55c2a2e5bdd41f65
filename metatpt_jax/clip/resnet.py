"""OpenAI CLIP's ResNet image tower (ModifiedResNet), as a Flax linen module.

As OpenAI's `clip/model.py` builds it: a stem of three 3x3 convolutions (the first with stride
2; widths w/2, w/2, w) each with BatchNorm and ReLU, then a 2x2 average pool; four stages of
Bottleneck blocks (planes w, 2w, 4w, 8w; expansion 4) whose strides are anti-aliased (a stride-s
average pool after the 3x3 convolution, and before the 1x1 convolution of the shortcut); then
attention pooling: the mean of the final grid's features is prepended as a query token, a
positional embedding added, and one multi-head attention from that token over all of them,
projected to the embedding width (no separate visual projection).

BatchNorm runs with its running statistics (CLIP is never trained here): its four tensors
(scale, bias, mean, var) live in the "params" collection like every other weight, so the tower
is one parameter pytree. Parameter names follow OpenAI's state dict (`checkpoint_formats`).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from metatpt_jax.clip.config import CLIPArch

BN_EPS = 1e-5  # torch.nn.BatchNorm2d's default


def _wide(dtype):
  return jnp.promote_types(dtype, jnp.float32)


class FrozenBatchNorm(nn.Module):
  """BatchNorm2d in eval mode: (x - mean) / sqrt(var + eps) * scale + bias, in fp32 or wider."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    wide = _wide(self.dtype)
    scale = self.param("scale", nn.initializers.ones, (c,), wide)
    bias = self.param("bias", nn.initializers.zeros, (c,), wide)
    mean = self.param("mean", nn.initializers.zeros, (c,), wide)
    var = self.param("var", nn.initializers.ones, (c,), wide)
    y = (x.astype(wide) - mean) * (scale * jax.lax.rsqrt(var + BN_EPS)) + bias
    return y.astype(self.dtype)


def _conv(features, kernel, name, dtype):
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)), use_bias=False,
                 dtype=dtype, name=name)


def _avg_pool(x, size):
  return x if size == 1 else nn.avg_pool(x, (size, size), strides=(size, size))


class Bottleneck(nn.Module):
  planes: int
  stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    out = nn.relu(FrozenBatchNorm(self.dtype, name="bn1")(
        _conv(self.planes, 1, "conv1", self.dtype)(x)))
    out = nn.relu(FrozenBatchNorm(self.dtype, name="bn2")(
        _conv(self.planes, 3, "conv2", self.dtype)(out)))
    out = _avg_pool(out, self.stride)
    out = FrozenBatchNorm(self.dtype, name="bn3")(
        _conv(self.planes * 4, 1, "conv3", self.dtype)(out))
    identity = x
    if self.stride > 1 or x.shape[-1] != self.planes * 4:
      identity = _conv(self.planes * 4, 1, "downsample_conv", self.dtype)(
          _avg_pool(x, self.stride))
      identity = FrozenBatchNorm(self.dtype, name="downsample_bn")(identity)
    return nn.relu(out + identity)


class AttentionPool(nn.Module):
  """The grid [N, H, W, C] -> [N, out]: its mean token attends to itself and every position."""
  heads: int
  out: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    n, h, w, c = x.shape
    x = x.reshape(n, h * w, c)
    x = jnp.concatenate([x.mean(axis=1, keepdims=True), x], axis=1)
    pos = self.param("positional_embedding", nn.initializers.normal(c ** -0.5), (h * w + 1, c))
    x = x + pos.astype(x.dtype)
    dense = lambda features, name: nn.Dense(features, dtype=self.dtype, name=name)
    split = lambda t: t.reshape(t.shape[:-1] + (self.heads, c // self.heads))
    q = split(dense(c, "q_proj")(x[:, :1])) * (c // self.heads) ** -0.5
    k, v = split(dense(c, "k_proj")(x)), split(dense(c, "v_proj")(x))
    scores = jnp.einsum("nqhd,nkhd->nhqk", q, k).astype(_wide(self.dtype))
    weights = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
    out = jnp.einsum("nhqk,nkhd->nqhd", weights, v).reshape(n, c)
    return dense(self.out, "c_proj")(out)


class ModifiedResNet(nn.Module):
  """Images [N, S, S, 3] (CLIP-normalised) -> image embeddings [N, embed_dim]."""
  arch: CLIPArch
  remat: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images):
    v, d = self.arch.vision, self.dtype
    x = images.astype(d)
    for i, (features, stride) in enumerate(((v.width // 2, 2), (v.width // 2, 1),
                                            (v.width, 1))):
      conv = nn.Conv(features, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)),
                     use_bias=False, dtype=d, name=f"conv{i + 1}")
      x = nn.relu(FrozenBatchNorm(d, name=f"bn{i + 1}")(conv(x)))
    x = _avg_pool(x, 2)
    block_cls = nn.remat(Bottleneck) if self.remat else Bottleneck
    for stage, blocks in enumerate(v.resnet_layers):
      for j in range(blocks):
        stride = 2 if stage > 0 and j == 0 else 1
        x = block_cls(v.width * 2 ** stage, stride, d, name=f"layer{stage + 1}_{j}")(x)
    return AttentionPool(v.heads, self.arch.embed_dim, d, name="attnpool")(x)

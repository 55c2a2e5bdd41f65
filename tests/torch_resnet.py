"""PyTorch transcription of OpenAI CLIP's ResNet image tower, the reference for parity.

Written from openai/CLIP `clip/model.py` (`ModifiedResNet`, `Bottleneck`, `AttentionPool2d`), in
its order of operations: the 3-conv stem with an average pool, four stages of anti-aliased
Bottleneck blocks (AvgPool2d before strided 1x1 convs) and the attention pool whose single query
is the mean token. The blocks are our own functional torch code over a state dict that uses
OpenAI's names ("visual."-prefixed); nothing is shared with metatpt_jax. BatchNorm runs in eval
mode (running statistics, eps 1e-5); everything is float32 under torch.no_grad.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

_EXPANSION = 4
_BN_EPS = 1e-5


def _stage_specs(layers, width):
  """(stage index, block index, inplanes, planes, stride) for every Bottleneck, in order."""
  specs, inplanes = [], width
  for i, blocks in enumerate(layers):
    planes = width * 2 ** i
    for j in range(blocks):
      stride = 1 if (i == 0 or j > 0) else 2
      specs.append((i + 1, j, inplanes, planes, stride))
      inplanes = planes * _EXPANSION
  return specs


def _param_shapes(layers, width, image_size, embed_dim):
  """(name, shape, kind) for every tensor of the tower in OpenAI's state-dict order."""
  out = []

  def conv(name, cout, cin, k):
    out.append((name + ".weight", (cout, cin, k, k), "w"))

  def bn(name, c):
    for suffix, kind in (("weight", "bn_w"), ("bias", "b"), ("running_mean", "rm"),
                         ("running_var", "rv"), ("num_batches_tracked", "nbt")):
      out.append((f"{name}.{suffix}", () if kind == "nbt" else (c,), kind))

  half = width // 2
  for idx, (cin, cout) in enumerate(((3, half), (half, half), (half, width)), start=1):
    conv(f"conv{idx}", cout, cin, 3)
    bn(f"bn{idx}", cout)
  for stage, j, inplanes, planes, stride in _stage_specs(layers, width):
    p = f"layer{stage}.{j}"
    conv(p + ".conv1", planes, inplanes, 1)
    bn(p + ".bn1", planes)
    conv(p + ".conv2", planes, planes, 3)
    bn(p + ".bn2", planes)
    conv(p + ".conv3", planes * _EXPANSION, planes, 1)
    bn(p + ".bn3", planes * _EXPANSION)
    if stride > 1 or inplanes != planes * _EXPANSION:
      conv(p + ".downsample.0", planes * _EXPANSION, inplanes, 1)
      bn(p + ".downsample.1", planes * _EXPANSION)
  feat = width * 32
  out.append(("attnpool.positional_embedding", ((image_size // 32) ** 2 + 1, feat), "pos"))
  for name, dout in (("k_proj", feat), ("q_proj", feat), ("v_proj", feat), ("c_proj", embed_dim)):
    out.append((f"attnpool.{name}.weight", (dout, feat), "w"))
    out.append((f"attnpool.{name}.bias", (dout,), "b"))
  return out


def random_visual_state_dict(layers=(3, 4, 6, 3), width=64, image_size=224, embed_dim=1024,
                             heads=None, seed=0) -> dict[str, torch.Tensor]:
  """Random weights for every parameter and buffer of the tower, under OpenAI's "visual." names.

  `heads` does not change any shape (it defaults to OpenAI's width * 32 // 64); it is accepted so
  that the signature mirrors `encode_image`.
  """
  del heads
  gen = torch.Generator().manual_seed(seed)
  randn = lambda shape: torch.randn(shape, generator=gen, dtype=torch.float32)
  sd = {}
  for name, shape, kind in _param_shapes(layers, width, image_size, embed_dim):
    if kind == "w":  # conv / linear: N(0, 1/fan_in)
      t = randn(shape) / float(np.prod(shape[1:])) ** 0.5
    elif kind == "b":
      t = 0.1 * randn(shape)
    elif kind == "bn_w":
      t = 1.0 + 0.2 * randn(shape)
    elif kind == "rm":
      t = 0.1 * randn(shape)
    elif kind == "rv":
      t = 0.5 + torch.rand(shape, generator=gen, dtype=torch.float32)
    elif kind == "pos":  # OpenAI's init: randn / C ** 0.5
      t = randn(shape) / shape[1] ** 0.5
    else:  # num_batches_tracked
      t = torch.tensor(0, dtype=torch.long)
    sd["visual." + name] = t
  return sd


def _bn(w, name, x):
  return F.batch_norm(x, w[name + ".running_mean"], w[name + ".running_var"],
                      w[name + ".weight"], w[name + ".bias"], training=False, eps=_BN_EPS)


def _bottleneck(w, p, x, inplanes, planes, stride):
  out = F.relu(_bn(w, p + ".bn1", F.conv2d(x, w[p + ".conv1.weight"])))
  out = F.relu(_bn(w, p + ".bn2", F.conv2d(out, w[p + ".conv2.weight"], padding=1)))
  if stride > 1:
    out = F.avg_pool2d(out, stride)
  out = _bn(w, p + ".bn3", F.conv2d(out, w[p + ".conv3.weight"]))
  identity = x
  if stride > 1 or inplanes != planes * _EXPANSION:
    identity = F.avg_pool2d(x, stride) if stride > 1 else x  # "-1": AvgPool2d(1) is a no-op
    identity = F.conv2d(identity, w[p + ".downsample.0.weight"])
    identity = _bn(w, p + ".downsample.1", identity)
  return F.relu(out + identity)


def _attnpool(w, x, heads):
  """AttentionPool2d: the mean token (plus positions) attends over all HW+1 tokens."""
  n, c = x.shape[:2]
  x = x.flatten(start_dim=2).permute(2, 0, 1)  # (HW, N, C)
  x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
  x = x + w["attnpool.positional_embedding"][:, None, :]
  lin = lambda t, name: F.linear(t, w[f"attnpool.{name}.weight"], w[f"attnpool.{name}.bias"])
  d = c // heads
  split = lambda t: t.reshape(t.shape[0], n * heads, d).transpose(0, 1)  # (N*heads, L, d)
  q = split(lin(x[:1], "q_proj")) * d ** -0.5
  k, v = split(lin(x, "k_proj")), split(lin(x, "v_proj"))
  attn = (q @ k.transpose(1, 2)).softmax(dim=-1)  # (N*heads, 1, HW+1)
  out = (attn @ v).transpose(0, 1).reshape(1, n, c)
  return lin(out, "c_proj")[0]  # [N, output_dim]


def encode_image(state_dict, images, layers, width, image_size, embed_dim, heads=None):
  """The tower's output [N, embed_dim] (numpy float32) for normalised images [N, 3, S, S]."""
  heads = width * 32 // 64 if heads is None else heads
  w = {k[len("visual."):]: torch.as_tensor(v).float() for k, v in state_dict.items()
       if k.startswith("visual.") and not k.endswith("num_batches_tracked")}
  with torch.no_grad():
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    assert x.shape[1:] == (3, image_size, image_size), x.shape
    x = F.relu(_bn(w, "bn1", F.conv2d(x, w["conv1.weight"], stride=2, padding=1)))
    x = F.relu(_bn(w, "bn2", F.conv2d(x, w["conv2.weight"], padding=1)))
    x = F.relu(_bn(w, "bn3", F.conv2d(x, w["conv3.weight"], padding=1)))
    x = F.avg_pool2d(x, 2)
    for stage, j, inplanes, planes, stride in _stage_specs(layers, width):
      x = _bottleneck(w, f"layer{stage}.{j}", x, inplanes, planes, stride)
    out = _attnpool(w, x, heads)
  assert out.shape[1] == embed_dim, out.shape
  return out.numpy()

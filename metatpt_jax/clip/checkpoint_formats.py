"""CLIP checkpoint formats: every rename and transpose between layouts lives here.

Three layouts meet in `_layout`, one row per parameter of our model:
  * ours: the Flax pytree of `metatpt_jax.clip.model` (Dense kernels [in, out], Conv HWIO,
    LayerNorm scale/bias);
  * Hugging Face `CLIPModel` state dicts (torch Linear weights [out, in], Conv OIHW);
  * OpenAI / open_clip ViT state dicts (fused attention `in_proj`, projections stored [W, E]).
Also architecture inference from the shapes of a bare state dict (the HF config.json <->
`CLIPArch` mapping is `hf_config`). File reading and writing is in `metatpt_jax.clip.checkpoint`.
"""
from __future__ import annotations

import math
import re
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from metatpt_jax.clip.config import (
  CLIPArch,
  TextArch,
  VisionArch,
)
from metatpt_jax.errors import UserError

# Buffers and TorchScript metadata that carry no weights.
_IGNORED_KEYS = re.compile(r"(^|\.)(position_ids|attn_mask|num_batches_tracked)$"
                           r"|^(input_resolution|context_length|vocab_size)$")
class CheckpointError(UserError):
  """A checkpoint could not be read or does not fit the requested architecture."""


def _listing(names, limit=10) -> str:
  names = list(names)
  more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


class _Entry(NamedTuple):
  """One parameter under its three names: the single mapping table behind every format."""
  path: tuple         # our parameter path
  shape: tuple        # our shape
  hf: str             # HF CLIPModel state-dict key
  openai: str         # OpenAI / open_clip state-dict key
  hf_kind: str        # torch layout relative to ours: "linear" (transposed), "conv", "plain"
  openai_kind: str
  part: int | None = None  # q/k/v third of OpenAI's fused attention in_proj


def _dense(path, d_in, d_out, hf, openai, part=None):
  weight, bias = (("in_proj_weight", "in_proj_bias") if part is not None
                  else ("weight", "bias"))
  return [_Entry(path + ("kernel",), (d_in, d_out), f"{hf}.weight", f"{openai}.{weight}",
                 "linear", "linear", part),
          _Entry(path + ("bias",), (d_out,), f"{hf}.bias", f"{openai}.{bias}", "plain", "plain",
                 part)]


def _norm(path, width, hf, openai):
  return [_Entry(path + ("scale",), (width,), f"{hf}.weight", f"{openai}.weight", "plain", "plain"),
          _Entry(path + ("bias",), (width,), f"{hf}.bias", f"{openai}.bias", "plain", "plain")]


def _encoder(path, hf, openai, width, hidden, layers):
  entries = []
  for i in range(layers):
    p, h, o = path + (f"layers_{i}",), f"{hf}.{i}", f"{openai}.{i}"
    for part, name in enumerate(("q_proj", "k_proj", "v_proj")):
      entries += _dense(p + ("self_attn", name), width, width, f"{h}.self_attn.{name}",
                        f"{o}.attn", part)
    entries += _dense(p + ("self_attn", "out_proj"), width, width, f"{h}.self_attn.out_proj",
                      f"{o}.attn.out_proj")
    entries += _norm(p + ("layer_norm1",), width, f"{h}.layer_norm1", f"{o}.ln_1")
    entries += _dense(p + ("mlp", "fc1"), width, hidden, f"{h}.mlp.fc1", f"{o}.mlp.c_fc")
    entries += _dense(p + ("mlp", "fc2"), hidden, width, f"{h}.mlp.fc2", f"{o}.mlp.c_proj")
    entries += _norm(p + ("layer_norm2",), width, f"{h}.layer_norm2", f"{o}.ln_2")
  return entries


def _conv(path, k, c_in, c_out, openai):
  return _Entry(path + ("kernel",), (k, k, c_in, c_out), "", f"{openai}.weight", "conv", "conv")


def _batch_norm(path, c, openai):
  return [_Entry(path + (ours,), (c,), "", f"{openai}.{theirs}", "plain", "plain")
          for ours, theirs in (("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"),
                               ("var", "running_var"))]


def _resnet_layout(arch: CLIPArch) -> list[_Entry]:
  """OpenAI's ModifiedResNet (`clip.resnet`); OpenAI names only (Hugging Face has none)."""
  v, vm = arch.vision, ("vision_model",)
  entries, c_in = [], 3
  for i, c_out in enumerate((v.width // 2, v.width // 2, v.width)):
    entries += [_conv(vm + (f"conv{i + 1}",), 3, c_in, c_out, f"visual.conv{i + 1}"),
                *_batch_norm(vm + (f"bn{i + 1}",), c_out, f"visual.bn{i + 1}")]
    c_in = c_out
  for stage, blocks in enumerate(v.resnet_layers):
    planes = v.width * 2 ** stage
    for j in range(blocks):
      p, o = vm + (f"layer{stage + 1}_{j}",), f"visual.layer{stage + 1}.{j}"
      entries += [_conv(p + ("conv1",), 1, c_in, planes, f"{o}.conv1"),
                  *_batch_norm(p + ("bn1",), planes, f"{o}.bn1"),
                  _conv(p + ("conv2",), 3, planes, planes, f"{o}.conv2"),
                  *_batch_norm(p + ("bn2",), planes, f"{o}.bn2"),
                  _conv(p + ("conv3",), 1, planes, planes * 4, f"{o}.conv3"),
                  *_batch_norm(p + ("bn3",), planes * 4, f"{o}.bn3")]
      if (stage > 0 and j == 0) or c_in != planes * 4:
        entries += [_conv(p + ("downsample_conv",), 1, c_in, planes * 4, f"{o}.downsample.0"),
                    *_batch_norm(p + ("downsample_bn",), planes * 4, f"{o}.downsample.1")]
      c_in = planes * 4
  grid, a = v.image_size // 32, vm + ("attnpool",)
  entries.append(_Entry(a + ("positional_embedding",), (grid * grid + 1, c_in), "",
                        "visual.attnpool.positional_embedding", "plain", "plain"))
  for name in ("q_proj", "k_proj", "v_proj"):
    entries += _dense(a + (name,), c_in, c_in, "", f"visual.attnpool.{name}")
  return entries + _dense(a + ("c_proj",), c_in, arch.embed_dim, "", "visual.attnpool.c_proj")


def _vit_layout(arch: CLIPArch) -> list[_Entry]:
  v, e, vm = arch.vision, arch.embed_dim, ("vision_model",)
  return [
      _Entry(vm + ("patch_embedding", "kernel"), (v.patch_size, v.patch_size, 3, v.width),
             "vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight",
             "conv", "conv"),
      _Entry(vm + ("class_embedding",), (v.width,), "vision_model.embeddings.class_embedding",
             "visual.class_embedding", "plain", "plain"),
      _Entry(vm + ("position_embedding",), (v.num_patches + 1, v.width),
             "vision_model.embeddings.position_embedding.weight", "visual.positional_embedding",
             "plain", "plain"),
      *_norm(vm + ("pre_layrnorm",), v.width, "vision_model.pre_layrnorm", "visual.ln_pre"),
      *_encoder(vm + ("encoder",), "vision_model.encoder.layers", "visual.transformer.resblocks",
                v.width, v.width * v.mlp_ratio, v.layers),
      *_norm(vm + ("post_layernorm",), v.width, "vision_model.post_layernorm", "visual.ln_post"),
      # OpenAI applies `x @ proj` with proj [W, E]: already our kernel layout.
      _Entry(("visual_projection", "kernel"), (v.width, e), "visual_projection.weight",
             "visual.proj", "linear", "plain"),
  ]


def _layout(arch: CLIPArch) -> list[_Entry]:
  t, e, tm = arch.text, arch.embed_dim, ("text_model",)
  vision = _resnet_layout(arch) if arch.vision.is_resnet else _vit_layout(arch)
  return vision + [
      _Entry(tm + ("token_embedding",), (t.vocab_size, t.width),
             "text_model.embeddings.token_embedding.weight", "token_embedding.weight",
             "plain", "plain"),
      _Entry(tm + ("position_embedding",), (t.context_length, t.width),
             "text_model.embeddings.position_embedding.weight", "positional_embedding",
             "plain", "plain"),
      *_encoder(tm + ("encoder",), "text_model.encoder.layers", "transformer.resblocks",
                t.width, t.width * t.mlp_ratio, t.layers),
      *_norm(tm + ("final_layer_norm",), t.width, "text_model.final_layer_norm", "ln_final"),
      _Entry(("text_projection", "kernel"), (t.width, e), "text_projection.weight",
             "text_projection", "linear", "plain"),
      _Entry(("logit_scale",), (), "logit_scale", "logit_scale", "plain", "plain"),
  ]


def _from_torch(kind, x):
  return x.T if kind == "linear" else x.transpose(2, 3, 1, 0) if kind == "conv" else x


def _to_torch(kind, x):
  return x.T if kind == "linear" else x.transpose(3, 2, 0, 1) if kind == "conv" else x


def _source_shape(entry: _Entry, fmt: str) -> tuple:
  kind = entry.hf_kind if fmt == "hf" else entry.openai_kind
  shape = tuple(_to_torch(kind, np.empty(entry.shape, np.bool_)).shape)
  if fmt == "openai" and entry.part is not None:
    shape = (3 * shape[0],) + shape[1:]
  return shape


def params_from_state_dict(state_dict: dict, arch: CLIPArch, fmt: str = "hf",
                           source: str = "checkpoint") -> dict:
  """Our parameter pytree from a flat state dict of NumPy arrays.

  Args:
    state_dict: key -> array, HF `CLIPModel` names (fmt "hf") or OpenAI names (fmt "openai").
    arch: the architecture the weights must fit exactly.
    source: names the checkpoint in error messages.
  Returns:
    Nested dict of float32 jax arrays, the structure of `model.init_params(key, arch)`.
  """
  if fmt == "hf" and arch.vision.is_resnet:
    raise CheckpointError(f"{source}: Hugging Face has no ResNet CLIP; a ResNet tower loads "
                          "from OpenAI state-dict names.")
  layout = _layout(arch)
  key_of = (lambda e: e.hf) if fmt == "hf" else (lambda e: e.openai)
  expected = {key_of(e): _source_shape(e, fmt) for e in layout}
  present = {k for k in state_dict if not _IGNORED_KEYS.search(k)}
  missing = [k for k in expected if k not in present]
  unexpected = sorted(present - expected.keys())
  problems = []
  if missing:
    problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
  if unexpected:
    problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
  if problems:
    raise CheckpointError(f"{source} does not match the architecture {arch}: "
                          + "; ".join(problems))
  bad = [f"{k}: expected {shape}, got {tuple(np.shape(state_dict[k]))}"
         for k, shape in expected.items() if tuple(np.shape(state_dict[k])) != shape]
  if bad:
    raise CheckpointError(f"{source}: {len(bad)} shape mismatch(es): {_listing(bad)}")
  params = {}
  for e in layout:
    x = np.asarray(state_dict[key_of(e)], np.float32)
    if fmt == "openai" and e.part is not None:
      x = np.split(x, 3, axis=0)[e.part]
    node = params
    for name in e.path[:-1]:
      node = node.setdefault(name, {})
    node[e.path[-1]] = jnp.asarray(_from_torch(e.hf_kind if fmt == "hf" else e.openai_kind, x))
  return params


def _state_dict_from_params(params: dict, arch: CLIPArch, fmt: str) -> dict[str, np.ndarray]:
  tensors, parts = {}, {}
  for e in _layout(arch):
    try:
      node = params
      for name in e.path:
        node = node[name]
    except (KeyError, TypeError):
      raise CheckpointError(f"params lack {'/'.join(e.path)}, which {arch} needs.") from None
    x = np.asarray(node, np.float32)
    if x.shape != e.shape:
      raise CheckpointError(f"params {'/'.join(e.path)}: expected {e.shape}, got {x.shape}.")
    key, kind = (e.hf, e.hf_kind) if fmt == "hf" else (e.openai, e.openai_kind)
    x = np.array(_to_torch(kind, x), order="C")  # keeps 0-d arrays 0-d
    if fmt == "openai" and e.part is not None:  # q, k, v fused into one in_proj
      parts.setdefault(key, {})[e.part] = x
      if len(parts[key]) == 3:
        tensors[key] = np.concatenate([parts[key][i] for i in range(3)], axis=0)
    else:
      tensors[key] = x
  return tensors


def hf_state_dict_from_params(params: dict, arch: CLIPArch) -> dict[str, np.ndarray]:
  """Flat HF `CLIPModel` state dict (float32 NumPy, torch layouts) from our parameter pytree."""
  if arch.vision.is_resnet:
    raise CheckpointError("Hugging Face has no ResNet CLIP: save a ResNet tower with "
                          "`openai_state_dict_from_params` (OpenAI names).")
  return _state_dict_from_params(params, arch, "hf")


def openai_state_dict_from_params(params: dict, arch: CLIPArch) -> dict[str, np.ndarray]:
  """Flat OpenAI CLIP state dict (float32 NumPy, torch layouts; ViT or ResNet towers)."""
  return _state_dict_from_params(params, arch, "openai")


_ARCH_KEYS = {
    "hf": dict(patch="vision_model.embeddings.patch_embedding.weight",
               vpos="vision_model.embeddings.position_embedding.weight",
               vfc1="vision_model.encoder.layers.0.mlp.fc1.weight",
               tok="text_model.embeddings.token_embedding.weight",
               tpos="text_model.embeddings.position_embedding.weight",
               tfc1="text_model.encoder.layers.0.mlp.fc1.weight",
               proj="text_projection.weight"),
    "openai": dict(patch="visual.conv1.weight", vpos="visual.positional_embedding",
                   vfc1="visual.transformer.resblocks.0.mlp.c_fc.weight",
                   tok="token_embedding.weight", tpos="positional_embedding",
                   tfc1="transformer.resblocks.0.mlp.c_fc.weight", proj="text_projection"),
}
_LAYER_PREFIXES = {"hf": ("vision_model.encoder.layers.", "text_model.encoder.layers."),
                   "openai": ("visual.transformer.resblocks.", "transformer.resblocks.")}


def _count_layers(state_dict, prefix):
  pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
  found = {int(m.group(1)) for k in state_dict if (m := pattern.match(k))}
  return max(found) + 1 if found else 0


def _infer_resnet_arch(state_dict: dict, source: str) -> CLIPArch:
  """OpenAI's build_model rule for ResNet towers: blocks per stage from the key names, width
  from layer1's first convolution, heads width * 32 // 64, image size 32 x the pool's grid."""
  needed = ("visual.attnpool.positional_embedding", "visual.attnpool.c_proj.weight",
            "token_embedding.weight", "positional_embedding", "text_projection",
            "transformer.resblocks.0.mlp.c_fc.weight")
  missing = [k for k in needed if k not in state_dict]
  if missing:
    raise CheckpointError(f"{source}: cannot infer the ResNet architecture, {len(missing)} "
                          f"missing key(s): {_listing(missing)}")
  shape = lambda key: np.shape(state_dict[key])
  stages = tuple(_count_layers(state_dict, f"visual.layer{i}.") for i in range(1, 5))
  width = shape("visual.layer1.0.conv1.weight")[0]
  grid = math.isqrt(shape("visual.attnpool.positional_embedding")[0] - 1)
  vocab, text_width = shape("token_embedding.weight")
  try:
    return CLIPArch(
        vision=VisionArch(image_size=32 * grid, patch_size=32, width=width, layers=0,
                          heads=width * 32 // 64, resnet_layers=stages),
        text=TextArch(vocab_size=vocab, context_length=shape("positional_embedding")[0],
                      width=text_width, layers=_count_layers(state_dict, "transformer.resblocks."),
                      heads=max(1, text_width // 64),
                      mlp_ratio=shape("transformer.resblocks.0.mlp.c_fc.weight")[0] // text_width),
        embed_dim=shape("text_projection")[1], activation="quick_gelu")
  except ValueError as err:
    raise CheckpointError(f"{source}: cannot infer the architecture from its shapes: "
                          f"{err}") from err


def infer_arch(state_dict: dict, fmt: str, source: str = "checkpoint") -> CLIPArch:
  """Architecture of a bare state dict from its shapes.

  Heads are not recorded in weights: OpenAI's rule, width // 64, is used (pass `arch` to
  `load_clip` to override); the activation is OpenAI's quick_gelu for the same reason.
  """
  if fmt == "openai" and "visual.layer1.0.conv1.weight" in state_dict:
    return _infer_resnet_arch(state_dict, source)
  names = _ARCH_KEYS[fmt]
  missing = [k for k in names.values() if k not in state_dict]
  if missing:
    raise CheckpointError(f"{source}: cannot infer the architecture, {len(missing)} missing "
                          f"key(s): {_listing(missing)}")
  shape = lambda name: np.shape(state_dict[names[name]])
  vision_prefix, text_prefix = _LAYER_PREFIXES[fmt]
  try:
    width, _, patch, _ = shape("patch")
    grid = math.isqrt(shape("vpos")[0] - 1)
    if grid * grid != shape("vpos")[0] - 1:
      raise ValueError(f"{names['vpos']} has {shape('vpos')[0]} rows, not a square grid of "
                       "patches plus a class token")
    vocab, text_width = shape("tok")
    return CLIPArch(
        vision=VisionArch(image_size=grid * patch, patch_size=patch, width=width,
                          layers=_count_layers(state_dict, vision_prefix),
                          heads=max(1, width // 64), mlp_ratio=shape("vfc1")[0] // width),
        text=TextArch(vocab_size=vocab, context_length=shape("tpos")[0], width=text_width,
                      layers=_count_layers(state_dict, text_prefix),
                      heads=max(1, text_width // 64), mlp_ratio=shape("tfc1")[0] // text_width),
        embed_dim=shape("proj")[0] if fmt == "hf" else shape("proj")[1],
        activation="quick_gelu")
  except (ValueError, IndexError) as err:  # wrong ranks, non-square grids, indivisible widths
    raise CheckpointError(f"{source}: cannot infer the architecture from its shapes: "
                          f"{err}") from err


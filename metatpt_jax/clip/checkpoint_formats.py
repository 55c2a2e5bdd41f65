"""CLIP checkpoint formats: every rename and transpose between layouts lives here.

Three layouts meet in `_layout`, one row per parameter of our model:
  * ours: the Flax pytree of `metatpt_jax.clip.model` (Dense kernels [in, out], Conv HWIO,
    LayerNorm scale/bias);
  * Hugging Face `CLIPModel` state dicts (torch Linear weights [out, in], Conv OIHW);
  * OpenAI / open_clip ViT state dicts (fused attention `in_proj`, projections stored [W, E]).
Also the HF config.json <-> `CLIPArch` mapping and architecture inference from the shapes of a
bare state dict. File reading and writing is in `metatpt_jax.clip.checkpoint`.
"""
from __future__ import annotations

import math
import re
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from metatpt_jax.clip.config import (
  EOT_TOKEN_ID,
  LAYER_NORM_EPS,
  LOGIT_SCALE_INIT,
  SOT_TOKEN_ID,
  CLIPArch,
  TextArch,
  VisionArch,
)
from metatpt_jax.errors import UserError

# Buffers and TorchScript metadata that carry no weights.
_IGNORED_KEYS = re.compile(r"(^|\.)(position_ids|attn_mask)$|^(input_resolution|context_length"
                           r"|vocab_size)$")
# transformers' CLIPTextConfig / CLIPVisionConfig defaults: `save_pretrained` omits them.
_HF_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048,
                         num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77,
                         hidden_act="quick_gelu", layer_norm_eps=1e-5)
_HF_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=12, image_size=224, patch_size=32,
                           hidden_act="quick_gelu", layer_norm_eps=1e-5)


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


def _layout(arch: CLIPArch) -> list[_Entry]:
  v, t, e = arch.vision, arch.text, arch.embed_dim
  vm, tm = ("vision_model",), ("text_model",)
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


def hf_state_dict_from_params(params: dict, arch: CLIPArch) -> dict[str, np.ndarray]:
  """Flat HF `CLIPModel` state dict (float32 NumPy, torch layouts) from our parameter pytree."""
  tensors = {}
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
    tensors[e.hf] = np.array(_to_torch(e.hf_kind, x), order="C")  # keeps 0-d arrays 0-d
  return tensors


def arch_from_hf_config(config: dict) -> CLIPArch:
  """`CLIPArch` from a transformers `CLIPConfig` dict (the contents of config.json)."""
  model_type = config.get("model_type", "clip")
  if model_type != "clip":
    raise CheckpointError(f"config.json describes a {model_type!r} model; only 'clip' "
                          "(transformers CLIPModel) checkpoints are supported.")
  text = {**_HF_TEXT_DEFAULTS, **(config.get("text_config") or {})}
  vision = {**_HF_VISION_DEFAULTS, **(config.get("vision_config") or {})}
  acts = {text["hidden_act"], vision["hidden_act"]}
  if len(acts) != 1 or not acts <= {"quick_gelu", "gelu"}:
    raise CheckpointError(f"unsupported hidden_act {sorted(acts)}: the model implements one "
                          "activation for both towers, 'quick_gelu' or 'gelu'.")
  for tower, c in (("text", text), ("vision", vision)):
    if not math.isclose(c["layer_norm_eps"], LAYER_NORM_EPS):
      raise CheckpointError(f"{tower} layer_norm_eps {c['layer_norm_eps']} != {LAYER_NORM_EPS}, "
                            "the value the model implements.")
    if c["intermediate_size"] % c["hidden_size"]:
      raise CheckpointError(f"{tower} intermediate_size {c['intermediate_size']} is not a "
                            f"multiple of hidden_size {c['hidden_size']}.")
  try:
    return CLIPArch(
        vision=VisionArch(image_size=vision["image_size"], patch_size=vision["patch_size"],
                          width=vision["hidden_size"], layers=vision["num_hidden_layers"],
                          heads=vision["num_attention_heads"],
                          mlp_ratio=vision["intermediate_size"] // vision["hidden_size"]),
        text=TextArch(vocab_size=text["vocab_size"],
                      context_length=text["max_position_embeddings"], width=text["hidden_size"],
                      layers=text["num_hidden_layers"], heads=text["num_attention_heads"],
                      mlp_ratio=text["intermediate_size"] // text["hidden_size"]),
        embed_dim=config.get("projection_dim", 512), activation=acts.pop())
  except ValueError as err:
    raise CheckpointError(f"config.json is inconsistent: {err}") from err


def hf_config_from_arch(arch: CLIPArch, logit_scale: float = LOGIT_SCALE_INIT) -> dict:
  """A transformers `CLIPConfig` dict describing `arch` (what config.json holds)."""
  v, t = arch.vision, arch.text
  common = dict(hidden_act=arch.activation, layer_norm_eps=LAYER_NORM_EPS, attention_dropout=0.0,
                initializer_range=0.02, initializer_factor=1.0, projection_dim=arch.embed_dim)
  text = dict(model_type="clip_text_model", vocab_size=t.vocab_size, hidden_size=t.width,
              intermediate_size=t.width * t.mlp_ratio, num_hidden_layers=t.layers,
              num_attention_heads=t.heads, max_position_embeddings=t.context_length,
              pad_token_id=1, bos_token_id=SOT_TOKEN_ID, eos_token_id=EOT_TOKEN_ID, **common)
  vision = dict(model_type="clip_vision_model", hidden_size=v.width,
                intermediate_size=v.width * v.mlp_ratio, num_hidden_layers=v.layers,
                num_attention_heads=v.heads, image_size=v.image_size, patch_size=v.patch_size,
                num_channels=3, **common)
  return dict(architectures=["CLIPModel"], model_type="clip", projection_dim=arch.embed_dim,
              logit_scale_init_value=float(logit_scale), initializer_factor=1.0,
              text_config=text, vision_config=vision)


# Keys whose shapes reveal the architecture of a bare state dict.
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


def infer_arch(state_dict: dict, fmt: str, source: str = "checkpoint") -> CLIPArch:
  """Architecture of a bare state dict from its shapes.

  Heads are not recorded in weights: OpenAI's rule, width // 64, is used (pass `arch` to
  `load_clip` to override); the activation is OpenAI's quick_gelu for the same reason.
  """
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


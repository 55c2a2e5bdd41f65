"""CLIP weight import and export: reading and writing checkpoint files.

`load_clip` reads a Hugging Face `CLIPModel` directory or an HF / OpenAI / open_clip state-dict
file (ViT towers; OpenAI's ResNet towers from OpenAI names); `save_hf` writes a Hugging Face
directory, `save_openai` an OpenAI-named safetensors file (the only format for a ResNet). Every rename and transpose between
formats, and the config.json <-> `CLIPArch` mapping, lives in
`metatpt_jax.clip.checkpoint_formats`; its public names are re-exported here.
Torch is imported lazily, only for `.bin`/`.pt` files; safetensors are read with NumPy.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import warnings
import zipfile

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from metatpt_jax.clip import hub
from metatpt_jax.clip.checkpoint_formats import (
  CheckpointError,
  _listing,
  hf_state_dict_from_params,
  infer_arch,
  openai_state_dict_from_params,
  params_from_state_dict,
)
from metatpt_jax.clip.config import CLIPArch
from metatpt_jax.clip.hf_config import arch_from_hf_config, hf_config_from_arch

__all__ = ["ACCEPTED_FORMATS", "CheckpointError", "arch_from_hf_config", "hf_config_from_arch",
           "hf_state_dict_from_params", "infer_arch", "load_clip",
           "openai_state_dict_from_params", "params_from_state_dict", "save_hf", "save_openai"]

ACCEPTED_FORMATS = (
    "a Hugging Face CLIPModel directory (config.json with model.safetensors or "
    "pytorch_model.bin, optionally sharded with an .index.json), or a single state-dict file "
    "(.safetensors, .bin, .pt, .pth; OpenAI/open_clip ViT or ResNet key names, or HF key names; "
    "OpenAI's TorchScript .pt archives too)")
_HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                    "pytorch_model.bin.index.json")


def _flat_fields(arch: CLIPArch) -> dict:
  flat = {}
  for name, value in dataclasses.asdict(arch).items():
    if isinstance(value, dict):
      flat.update({f"{name}.{k}": v for k, v in value.items()})
    else:
      flat[name] = value
  return flat


def _reconcile(found: CLIPArch, requested: CLIPArch | None, source: str,
               unknowable=()) -> CLIPArch:
  """`requested` if it agrees with `found` on every field except `unknowable`, else an error."""
  if requested is None:
    return found
  have, want = _flat_fields(found), _flat_fields(requested)
  diffs = [f"{k}: checkpoint {have[k]!r}, requested {want[k]!r}"
           for k in have if k not in unknowable and have[k] != want[k]]
  if diffs:
    raise CheckpointError(f"{source} holds another architecture than the one requested; "
                          f"{len(diffs)} difference(s): {'; '.join(diffs)}")
  return requested


def _read_safetensors(path: pathlib.Path) -> dict:
  # bfloat16 files load too: ml_dtypes (imported by jax) registers the dtype with NumPy.
  try:
    return load_file(str(path))
  except SafetensorError as err:  # bad header, sizes that disagree with the header, ...
    raise CheckpointError(f"{path} is corrupt or truncated and cannot be read as safetensors "
                          f"({err}); re-download it.") from err


def _is_torchscript(path: pathlib.Path) -> bool:
  # TorchScript archives are zip files holding code and constants.pkl beside the weights.
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as archive:
    return any(name.endswith("constants.pkl") for name in archive.namelist())


def _read_torch(path: pathlib.Path) -> dict:
  import torch  # only torch-format files need it
  try:
    if _is_torchscript(path):  # as OpenAI's released ViT-B-16.pt etc.
      with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # jit.load's deprecation notice
        obj = torch.jit.load(str(path), map_location="cpu")
    else:
      obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as err:
    raise CheckpointError(f"{path} cannot be read as a PyTorch state dict ({err}); the file "
                          "may be corrupt or truncated: re-download it.") from err
  if hasattr(obj, "state_dict") and callable(obj.state_dict):
    obj = obj.state_dict()
  if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
    obj = obj["state_dict"]  # training checkpoints wrap the weights
  if not isinstance(obj, dict):
    raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict.")
  return {k.removeprefix("module."): v.detach().float().numpy()
          for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _read_weights(path: pathlib.Path) -> dict:
  if path.name.endswith(".index.json"):  # sharded HF checkpoint
    shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
    merged = {}
    for shard in shards:
      merged.update(_read_weights(path.parent / shard))
    return merged
  if path.suffix == ".safetensors":
    return _read_safetensors(path)
  return _read_torch(path)


def _detect_format(state_dict: dict, source: str) -> str:
  keys = list(state_dict)
  if any(k.startswith(("vision_model.", "text_model.")) for k in keys):
    return "hf"
  if any(k.startswith("visual.trunk.") for k in keys):
    raise CheckpointError(f"{source} is a timm-tower CLIP; only OpenAI's ViT and ResNet towers "
                          "are supported.")
  if any(k.startswith("visual.") for k in keys):
    return "openai"
  raise CheckpointError(f"{source}: unrecognised key names (first: {_listing(keys, 5)}); "
                        f"expected HF CLIPModel or OpenAI CLIP names. Accepted: "
                        f"{ACCEPTED_FORMATS}.")


def _load_hf_directory(path: pathlib.Path, arch: CLIPArch | None):
  weights = [name for name in _HF_WEIGHT_FILES if (path / name).exists()]
  if not (path / "config.json").exists() or not weights:
    found = sorted(p.name for p in path.iterdir())
    raise CheckpointError(f"{path} holds no Hugging Face CLIP checkpoint: it needs config.json "
                          f"and one of {', '.join(_HF_WEIGHT_FILES)}; found "
                          f"[{_listing(found, 20) or 'nothing'}]. For an OpenAI/open_clip "
                          "state-dict file, pass the file's own path.")
  try:
    config = json.loads((path / "config.json").read_text())
  except json.JSONDecodeError as err:
    raise CheckpointError(f"{path / 'config.json'} is not valid JSON ({err}).") from err
  arch = _reconcile(arch_from_hf_config(config), arch, str(path))
  state_dict = _read_weights(path / weights[0])
  return params_from_state_dict(state_dict, arch, "hf", str(path / weights[0])), arch


def load_clip(path, arch: CLIPArch | None = None) -> tuple[dict, CLIPArch]:
  """Loads CLIP weights into our parameter pytree.

  Args:
    path: a Hugging Face CLIPModel directory or a state-dict file (see ACCEPTED_FORMATS), or
      a Hugging Face model id such as "openai/clip-vit-base-patch16" (downloaded through
      huggingface_hub when a network exists; see `metatpt_jax.clip.hub`).
    arch: the architecture expected. If given, the checkpoint must match it (CheckpointError
      listing the differences otherwise); for bare state dicts it also supplies the heads and
      activation, which weights do not record (default: width // 64 heads, quick_gelu).
  Returns:
    (params, arch): params has the structure of `model.init_params(key, arch)`, float32.
  Raises:
    CheckpointError (a ValueError) naming the problem: missing path, no weights, corrupt file,
    other architecture, missing/unexpected keys, shape mismatches.
  """
  path = hub.resolve_checkpoint(path)
  if not path.exists():
    raise CheckpointError(f"No checkpoint at {path}: the path does not exist. Accepted: "
                          f"{ACCEPTED_FORMATS}.")
  if path.is_dir():
    return _load_hf_directory(path, arch)
  state_dict = _read_weights(path)
  fmt = _detect_format(state_dict, str(path))
  arch = _reconcile(infer_arch(state_dict, fmt, str(path)), arch, str(path),
                    unknowable=("vision.heads", "text.heads", "activation"))
  return params_from_state_dict(state_dict, arch, fmt, str(path)), arch


def save_hf(params: dict, arch: CLIPArch, directory, dtype: str = "float32") -> pathlib.Path:
  """Writes config.json and model.safetensors, loadable by `CLIPModel.from_pretrained`.

  `dtype` "float16" halves the file (OpenAI's released CLIP weights are float16 too); loading
  casts back to float32."""
  if dtype not in ("float32", "float16"):
    raise ValueError(f"dtype={dtype!r}: give 'float32' or 'float16'.")
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  tensors = {k: np.asarray(v, dtype) for k, v in hf_state_dict_from_params(params, arch).items()}
  # transformers refuses safetensors files without a "format" entry in their metadata.
  save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
  config = hf_config_from_arch(arch, float(tensors["logit_scale"]))
  (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
  return directory


def save_openai(params: dict, arch: CLIPArch, path, dtype: str = "float32") -> pathlib.Path:
  """Writes one safetensors file under OpenAI's state-dict names (ViT or ResNet towers), which
  `load_clip` reads back (the architecture inferred from its shapes, as OpenAI's build_model
  does)."""
  if dtype not in ("float32", "float16"):
    raise ValueError(f"dtype={dtype!r}: give 'float32' or 'float16'.")
  path = pathlib.Path(path)
  if path.suffix != ".safetensors":
    raise ValueError(f"{path}: save_openai writes a .safetensors file; name it so.")
  path.parent.mkdir(parents=True, exist_ok=True)
  tensors = {k: np.asarray(v, dtype)
             for k, v in openai_state_dict_from_params(params, arch).items()}
  save_file(tensors, str(path), metadata={"format": "pt"})
  return path

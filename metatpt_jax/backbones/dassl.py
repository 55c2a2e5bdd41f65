"""Import of the prompt learners that CoOp, MaPLe and MMRL release as Dassl checkpoints (and of
our own `.npz` prompt files, `backbones.train.save_prompt`).

A Dassl file (`prompt_learner/model.pth.tar-N`, `MultiModalPromptLearner/model.pth.tar-N`,
`MultiModalRepresentationLearner/model.pth.tar-N`) is a torch pickle {"state_dict", "epoch",
"optimizer", ...}. Its state dict may hold all of the model (MaPLe's and MMRL's do); only the
prompt learner is read, the CLIP weights come from the CLIP checkpoint. Buffers rebuilt from the
class names (`token_prefix`, `token_suffix`, MMRL's `prompt_embeddings`) are ignored, as the
authors' loaders drop them. torch is imported only here, on use.
"""
from __future__ import annotations

import os
import re

import jax
import numpy as np

from metatpt_jax.clip.config import CLIPArch
from metatpt_jax.errors import UserError


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """The float32 arrays of a Dassl checkpoint's state dict ("module." prefixes removed)."""
  if not os.path.isfile(path):
    raise UserError(f"Prompt checkpoint {path} does not exist: give a Dassl file such as "
                    "MultiModalPromptLearner/model.pth.tar-2.")
  import torch
  try:
    raw = torch.load(path, map_location="cpu", weights_only=False)
  except Exception as err:  # a truncated or foreign file
    raise UserError(f"{path} is not a readable torch checkpoint ({type(err).__name__}: "
                    f"{str(err).splitlines()[0] if str(err) else ''}).") from None
  state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
  if not isinstance(state, dict):
    raise UserError(f"{path} holds no state dict (a Dassl checkpoint is a dict with "
                    "'state_dict').")
  return {re.sub(r"^module\.", "", k): v.detach().float().numpy() for k, v in state.items()
          if hasattr(v, "detach")}


def _linear(state, prefix, index=None) -> dict:
  key = prefix if index is None else f"{prefix}.{index}"
  return {"kernel": state[f"{key}.weight"].T, "bias": state[f"{key}.bias"]}


def _stack(layers: list[dict]) -> dict:
  return {k: np.stack([layer[k] for layer in layers]) for k in ("kernel", "bias")}


def _count(state, prefix: str) -> int:
  return len({m.group(1) for k in state if (m := re.match(re.escape(prefix) + r"\.(\d+)", k))})


def _maple(state, backbone) -> dict:
  p = "prompt_learner"
  ctx = state[f"{p}.ctx"]  # first: a KeyError here says this is not a MaPLe file
  deep = _count(state, f"{p}.compound_prompts_text")
  if deep != backbone.depth - 1:
    raise UserError(f"This MaPLe checkpoint has prompt depth {deep + 1}; the backbone asks for "
                    f"{backbone.depth}: set the backbone's depth to {deep + 1}.")
  proj = _linear(state, f"{p}.proj")
  if not deep:  # depth 1: no layer-wise prompts, empty stacks of the right trailing shapes
    return {"ctx": ctx, "proj": proj, "deep_text": np.zeros((0, *np.shape(ctx)), np.float32),
            "deep_proj": {k: np.zeros((0, *np.shape(v)), np.float32) for k, v in proj.items()}}
  return {"ctx": ctx, "proj": proj,
          "deep_text": np.stack([state[f"{p}.compound_prompts_text.{i}"] for i in range(deep)]),
          "deep_proj": _stack([_linear(state, f"{p}.compound_prompt_projections", i)
                               for i in range(deep)])}


def _mmrl(state, backbone) -> dict:
  p = "representation_learner"
  rep = state[f"{p}.compound_rep_tokens"]  # first: a KeyError here says this is not MMRL's
  layers = _count(state, f"{p}.compound_rep_tokens_r2vproj")
  if layers != len(backbone.rep_layers):
    raise UserError(f"This MMRL checkpoint maps into {layers} layers; the backbone's rep_layers "
                    f"{backbone.rep_layers} are {len(backbone.rep_layers)}.")
  return {"rep": rep,
          "r2v": _stack([_linear(state, f"{p}.compound_rep_tokens_r2vproj", i)
                         for i in range(layers)]),
          "r2t": _stack([_linear(state, f"{p}.compound_rep_tokens_r2tproj", i)
                         for i in range(layers)]),
          "proj_rep": state["image_encoder.proj_rep"]}


def _coop(state, backbone) -> dict:
  del backbone
  return {"ctx": state["prompt_learner.ctx"] if "prompt_learner.ctx" in state
          else state["ctx"]}


_READERS = {"coop": _coop, "maple": _maple, "mmrl": _mmrl}


def load_prompt(path: str, backbone, clip_params, arch: CLIPArch) -> dict:
  """The backbone's prompt parameters from a Dassl checkpoint, checked against the shapes the
  backbone makes for `arch` (`backbone.init`)."""
  if path.endswith(".npz"):  # ours: `backbones.train.save_prompt`
    if not os.path.isfile(path):
      raise UserError(f"Prompt file {path} does not exist.")
    from metatpt_jax.backbones.train import load_prompt_npz
    state, prompt = {}, load_prompt_npz(path)
  else:
    state = read_state_dict(path)
  try:
    prompt = prompt if path.endswith(".npz") else _READERS[backbone.name](state, backbone)
  except KeyError as err:
    raise UserError(f"{path} has no {err.args[0]!r}: is it a {backbone.name} checkpoint? Its "
                    f"keys start {', '.join(sorted(state)[:4])}.") from None
  want = jax.eval_shape(lambda: backbone.init(clip_params, arch, jax.random.key(0)))
  got = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(prompt)}
  need = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(want)}
  if set(got) != set(need):
    raise UserError(f"{path} holds tensors {sorted(got)}; a {backbone.name} prompt is "
                    f"{sorted(need)}: is it a {backbone.name} file with these settings?")
  for name, expected in need.items():
    if np.shape(got[name]) != expected.shape:
      raise UserError(f"{path}: {backbone.name} tensor {name} has shape {np.shape(got[name])}; "
                      f"this CLIP and backbone need {expected.shape}.")
  return jax.tree.map(lambda x: np.asarray(x, np.float32), prompt)

"""Prompt backbones: plain CLIP / CoOp, MaPLe and MMRL, each a hashable spec whose methods are
pure functions of CLIP's parameters and a prompt-parameter dict (see `coop.CoOp`)."""
from __future__ import annotations

import dataclasses

from metatpt_jax.backbones.coop import CoOp
from metatpt_jax.backbones.maple import MaPLe
from metatpt_jax.backbones.mmrl import MMRL
from metatpt_jax.errors import UserError
from metatpt_jax.frozen_clip import FrozenCLIP

BACKBONES = {"coop": CoOp, "maple": MaPLe, "mmrl": MMRL}


def get(name: str, **fields):
  """The backbone `name` with the given fields, e.g. get("maple", depth=9)."""
  if name not in BACKBONES:
    raise UserError(f"Unknown prompt backbone {name!r}; choose one of {', '.join(BACKBONES)}.")
  cls = BACKBONES[name]
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise UserError(f"Backbone {name!r} has no field {', '.join(unknown)}; its fields: "
                    f"{', '.join(sorted(known))}.")
  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
  return cls(**fields)


def make_frozen(backbone, clip_params, arch, class_names, prompt: dict,
                adapt: tuple[str, ...] | None = None, tokenizer=None) -> FrozenCLIP:
  """The frozen state of test-time tuning on `backbone`: its class prompts, the tensors tuning
  adapts (`adapt`, default the backbone's `adapt` field) as `ctx_init`, the others fixed.
  Pair it with `ModelSpec(arch, backbone=backbone)`."""
  adapt = tuple(adapt or backbone.adapt)
  unknown = sorted(set(adapt) - set(prompt))
  if unknown or not adapt:
    raise UserError(f"{backbone.name} cannot adapt {unknown or 'nothing'}: choose among its "
                    f"prompt tensors {', '.join(sorted(prompt))}.")
  params = backbone.clip_params(clip_params)
  bank = backbone.bank(params, arch, class_names, tokenizer)
  return FrozenCLIP(params, bank, {k: prompt[k] for k in adapt},
                    {k: v for k, v in prompt.items() if k not in adapt})


__all__ = ["BACKBONES", "CoOp", "MaPLe", "MMRL", "get", "make_frozen"]

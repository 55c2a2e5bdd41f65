"""Prompt backbones: plain CLIP / CoOp, MaPLe and MMRL, each a hashable spec whose methods are
pure functions of CLIP's parameters and a prompt-parameter dict (see `coop.CoOp`)."""
from __future__ import annotations

import dataclasses

from metatpt_jax.backbones.coop import CoOp
from metatpt_jax.backbones.maple import MaPLe
from metatpt_jax.backbones.mmrl import MMRL
from metatpt_jax.errors import UserError

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


__all__ = ["BACKBONES", "CoOp", "MaPLe", "MMRL", "get"]

"""Periodic train-state checkpoints: safetensors for the arrays, JSON for the bookkeeping.

One file per checkpoint (`state.safetensors`, keys = pytree paths) written to a temporary
name and renamed, so an interrupted write never replaces a good checkpoint. Restoring needs a
template state of the same structure (from `init_state`), so optimiser NamedTuples come back
with their types; a checkpoint of another run's structure is a UserError (the workdir is the
user's to change).
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from metatpt_jax.errors import UserError

STATE_FILE = "state.safetensors"
INFO_FILE = "state.json"


def _flat(tree) -> dict:
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}


def save_state(directory: str, state, info: dict) -> None:
  """Writes `state` (any pytree of arrays) and `info` (JSON-able) into `directory`."""
  from safetensors.numpy import save_file
  os.makedirs(directory, exist_ok=True)
  arrays = {k: np.array(v, order="C") for k, v in _flat(state).items()}
  tmp = os.path.join(directory, STATE_FILE + ".tmp")
  save_file(arrays, tmp)
  os.replace(tmp, os.path.join(directory, STATE_FILE))
  with open(os.path.join(directory, INFO_FILE + ".tmp"), "w") as f:
    json.dump(info, f, indent=2)
  os.replace(os.path.join(directory, INFO_FILE + ".tmp"), os.path.join(directory, INFO_FILE))


def has_state(directory: str) -> bool:
  return all(os.path.exists(os.path.join(directory, f)) for f in (STATE_FILE, INFO_FILE))


def restore_state(directory: str, template):
  """Returns (state shaped like `template`, info dict) from `directory`."""
  from safetensors.numpy import load_file
  arrays = load_file(os.path.join(directory, STATE_FILE))
  leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
  missing = [jax.tree_util.keystr(p) for p, _ in leaves if jax.tree_util.keystr(p) not in arrays]
  if missing:
    raise UserError(f"Checkpoint in {directory} does not match this run's state: "
                    f"{len(missing)} missing entries, e.g. {missing[:3]}. Use another workdir "
                    "or delete the old checkpoint.")
  restored = []
  for path, leaf in leaves:
    value = arrays[jax.tree_util.keystr(path)]
    if value.shape != np.shape(leaf):
      raise UserError(f"Checkpoint entry {jax.tree_util.keystr(path)} in {directory} has shape "
                      f"{value.shape}, this run expects {np.shape(leaf)}. Use another workdir "
                      "or delete the old checkpoint.")
    restored.append(jnp.asarray(value, dtype=leaf.dtype))
  with open(os.path.join(directory, INFO_FILE)) as f:
    info = json.load(f)
  return jax.tree_util.tree_unflatten(treedef, restored), info

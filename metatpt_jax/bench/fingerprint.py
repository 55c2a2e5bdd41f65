"""What produced a benchmark record: a fingerprint of everything that decides a sample's result.

A record's fingerprint hashes the resolved method spec (every field, defaults included), the
checkpoint's content (a digest of the loaded parameters, so a renamed copy is the same model and
a re-trained one is not), the model's compute dtype, the prompt config, the domain (name, split,
subset size, class names, image size, full-image canvas size), the seed and `RECORD_VERSION`.
Records are keyed by it, so a run resumes only records of exactly its own setting; a sweep by
`--config.*` overrides computes each new setting afresh. What does not change a result is left
out: batch size, device and process count, rematerialisation, the inner gradient's view chunks,
progress bars, output paths.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import jax
import numpy as np

# Bump when a code change alters what a given setting computes (records of older versions are
# then never reused). 2: TPT's views are cut from the full image (canvas), records carry a
# fingerprint.
RECORD_VERSION = 2
# Spec fields that decide how the work is split, not what it computes (like rematerialisation):
# left out of the fingerprint, so records made with any value are the same setting's.
EXECUTION_FIELDS = ("view_chunk",)


def result_fields(spec) -> Any:
  """`spec` in plain form without its EXECUTION_FIELDS, and without its `later_fields` while
  they hold their defaults (fields added after records were made, whose defaults compute what
  those records did: the records keep their fingerprints), in nested specs too (MetaTPT's
  `GeneratorSpec`). None stays None."""
  if spec is None:
    return None
  fields = _without_later_defaults(spec, plain(spec))
  for name in EXECUTION_FIELDS:
    fields.pop(name, None)
  return fields


def _without_later_defaults(value, fields: dict) -> dict:
  """`fields` (plain(value)) less value's later fields at their defaults, recursively."""
  defaults = type(value)()
  for name in getattr(value, "later_fields", ()):
    if getattr(value, name) == getattr(defaults, name):
      fields.pop(name)
  for name, sub in fields.items():
    nested = getattr(value, name, None)
    if isinstance(sub, dict) and hasattr(nested, "later_fields"):
      fields[name] = _without_later_defaults(nested, sub)
  return fields


def params_digest(params) -> str:
  """sha256 of a parameter pytree's paths, dtypes, shapes and bytes (16 hex digits)."""
  digest = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
    arr = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f"{jax.tree_util.keystr(path)}|{arr.dtype}|{arr.shape}|".encode())
    digest.update(arr.tobytes())
  return digest.hexdigest()[:16]


def plain(value: Any) -> Any:
  """JSON-able form of specs: NamedTuples become dicts (with their type name), tuples lists."""
  if hasattr(value, "_asdict"):
    return {"__type__": type(value).__name__,
            **{k: plain(v) for k, v in value._asdict().items()}}
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    return {"__type__": type(value).__name__,
            **{f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}}
  if isinstance(value, dict):
    return {str(k): plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [plain(v) for v in value]
  if hasattr(value, "value") and hasattr(value, "name"):  # Enum
    return value.value
  if isinstance(value, np.generic):
    return value.item()
  return value


def fingerprint(setting: dict) -> str:
  """16 hex digits identifying `setting` (a dict of plain values; order does not matter)."""
  text = json.dumps(plain(dict(setting, record_version=RECORD_VERSION)), sort_keys=True,
                    default=repr)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _flatten(value, prefix=""):
  if isinstance(value, dict):
    out = {}
    for k, v in value.items():
      if k != "__type__":
        out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: value}


def describe_change(old: dict, new: dict) -> str:
  """Names the fields that differ between two settings, e.g. 'method.spec.lr 0.005 -> 0.5'."""
  old, new = _flatten(plain(old)), _flatten(plain(new))
  changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
  shown = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" if k != "data.class_names" else k
           for k in changed[:4]]
  return ", ".join(shown) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "") \
      if changed else "nothing"

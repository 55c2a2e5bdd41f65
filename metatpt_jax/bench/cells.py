"""One benchmark cell's setting (what its fingerprint hashes), where it was computed, and the
settings file kept beside the records."""
from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import os

import jax
import numpy as np

from metatpt_jax import prompts, registry
from metatpt_jax.bench import fingerprint as fp_lib
from metatpt_jax.bench import methods as methods_lib
from metatpt_jax.bench import records as records_lib
from metatpt_jax.bench import storage
from metatpt_jax.data import benchmarks
from metatpt_jax.errors import UserError


def cell_size(cfg, domain) -> int:
  """The images a cell holds when complete: data.num_images, or the whole domain when it holds
  fewer (so a complete cell reads as complete, e.g. "every image" as a large num_images)."""
  return int(min(cfg.data.num_images, len(domain.labels)))


# Matmul precisions jax.default_matmul_precision accepts; on CPU every one of the first three
# computes float32 matmuls in float32 (the records made before the platform entered settings).
MATMUL_PRECISIONS = ("default", "highest", "float32", "high", "tensorfloat32", "bfloat16")
_CPU_FULL_PRECISION = MATMUL_PRECISIONS[:3]


def platform_setting(cfg) -> dict:
  """Where the numbers are computed: backend, device kind and the matmul precision asked for
  (on TPU a "default" float32 matmul runs in bf16 passes, on recent GPUs in TF32)."""
  return dict(backend=jax.default_backend(), device_kind=jax.local_devices()[0].device_kind,
              matmul_precision=cfg.model.get("matmul_precision", "default"))


def _platform_part(platform: dict) -> dict | None:
  """The platform as a setting enters the fingerprint: None for CPU at full float32 precision,
  so that the records made before the platform was recorded keep their fingerprints; any other
  platform or precision is its own setting, never resumed into another's run."""
  if platform["backend"] == "cpu" and platform["matmul_precision"] in _CPU_FULL_PRECISION:
    return None
  return platform


def cell_setting(cfg, name, kind, spec, domain, seed, digest, arch) -> dict:
  """Everything that decides the results of one cell (hashed into its fingerprint)."""
  method = dict(kind=kind, spec=fp_lib.result_fields(spec))
  if registry.get(kind).is_online(spec):  # online: each process is one stream of its slice
    method["streams"] = jax.process_count()
  offline = registry.get(kind).offline_images(spec, cfg.methods[name])
  if offline:  # unlabeled images of the domain read before the stream (MetaTPT offline)
    method["offline_images"] = int(offline)
  paper = domain.name.startswith(benchmarks.PREFIX + ":")
  data = dict(domain=domain.name, split="paper" if paper else cfg.data.split,
              num_images=cell_size(cfg, domain), class_names=list(domain.class_names),
              image_size=arch.vision.image_size,
              canvas_size=int(cfg.data.get("canvas_size", 0)) if paper else None)
  if paper:  # which label each class name is scored against (a class-name file, label_map)
    data["labels"] = hashlib.sha256(np.asarray(domain.labels, np.int64).tobytes()).hexdigest()[:16]
  setting = dict(method=method, checkpoint=digest, arch=fp_lib.result_fields(arch), seed=int(seed),
                 compute_dtype=cfg.model.compute_dtype,
                 prompt=dict(n_ctx=int(cfg.prompt.n_ctx), init=cfg.prompt.init or None),
                 data=data)
  backbone = backbone_setting(cfg.prompt)
  if backbone is not None:  # absent for plain CLIP: its records keep their fingerprints
    setting["prompt"] = dict(backbone=backbone)
  else:
    init_digest = context_file_digest(cfg.prompt.init)
    if init_digest is not None:  # a saved context (CoOp): its bytes, not only its path
      setting["prompt"]["init_sha256"] = init_digest
  platform = _platform_part(platform_setting(cfg))
  if platform is not None:
    setting["platform"] = platform
  return setting


def context_file_digest(init) -> str | None:
  """sha256[:16] of the context file `prompt.init` names (CoOp's vectors), None for words: a
  context retrained under the same file name makes a new setting."""
  if not init or not prompts.is_context_file(init):
    return None
  if not os.path.isfile(init):
    raise UserError(f"--config.prompt.init={init} does not exist: give a saved context (.npz "
                    "with `ctx`, or CoOp's prompt_learner/model.pth.tar-N) or the words.")
  return file_digest(init)


def backbone_setting(prompt_cfg) -> dict | None:
  """A prompt backbone as it enters the fingerprint: its fields, what is adapted and a digest
  of its Dassl file's bytes (or "init" for the backbone's seeded random init)."""
  backbone = methods_lib.backbone_spec(prompt_cfg)
  if backbone is None:
    return None
  path = prompt_cfg.get("backbone_checkpoint", "")
  digest = "init"
  if path:
    if not os.path.isfile(path):
      raise UserError(f"--config.prompt.backbone_checkpoint={path} does not exist: give the "
                      f"{backbone.name} Dassl file (e.g. .../model.pth.tar-2), or '' for the "
                      "backbone's own init.")
    digest = file_digest(path)
  fields = {f.name: getattr(backbone, f.name) for f in dataclasses.fields(backbone)}
  fields["adapt"] = tuple(prompt_cfg.get("adapt", ())) or backbone.adapt
  return dict(name=backbone.name, checkpoint=digest, **fields)


def file_digest(path: str) -> str:
  """sha256[:16] of a file's bytes, read once per version of the file: every cell of a run
  fingerprints the same prompt file."""
  stat = os.stat(path)
  return _file_digest(os.path.abspath(path),
                      (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns))


@functools.lru_cache(maxsize=32)
def _file_digest(path: str, version: tuple) -> str:
  del version  # part of the cache key only: a rewritten or replaced file is read again
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()[:16]


class Settings:
  """fingerprint -> setting, kept beside the records so a changed setting can be named."""

  def __init__(self, directory: str, writer: bool):
    self.path, self.writer = storage.join(directory, records_lib.SETTINGS_FILE), writer
    self.known = {}
    if storage.exists(self.path):
      self.known = json.loads(storage.read_bytes(self.path))

  def add(self, fingerprint: str, setting: dict) -> None:
    if fingerprint in self.known:
      return
    self.known[fingerprint] = fp_lib.plain(setting)
    if self.writer:
      storage.write_bytes(self.path, json.dumps(self.known, indent=1, sort_keys=True,
                                                default=repr).encode())


def incomplete_cells(recs: list[dict], cells: dict) -> str:
  """'' when every cell ({fingerprint: (method, domain, seed, size)}) holds its records; else
  what is missing, e.g. '2 of 6 cells incomplete: tpt on d seed 0 has 6 of 12 records, ...'."""
  counts = collections.Counter(r["fingerprint"] for r in recs)
  short = [(cell, counts[fp]) for fp, cell in cells.items() if counts[fp] < cell[3]]
  if not short:
    return ""
  named = ", ".join(f"{m} on {d} seed {seed} has {have} of {size} records"
                    for (m, d, seed, size), have in short[:3])
  more = f" and {len(short) - 3} more" if len(short) > 3 else ""
  return f"{len(short)} of {len(cells)} cells incomplete: {named}{more}"

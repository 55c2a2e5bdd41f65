"""Append-only per-sample results (JSONL) that make an interrupted benchmark resumable.

Records live in `<output_dir>/samples*.jsonl`: `samples.jsonl` for a one-process run,
`samples.p<i>-of-<n>.jsonl` for process i of n, so processes never write the same file. Every
batch's records are appended and fsync'ed before the next batch starts. On restart every file of
the directory is read back; a line cut short by a kill is dropped (it was never complete).

On an object store (`gs://...`, see `bench.storage`) objects cannot be appended to, so every
batch becomes its own object, `samples.<part>.jsonl` or `samples.p<i>-of-<n>.<part>.jsonl`
with a running 6-digit part number; an upload appears whole or not at all, so nothing is cut.

Records are keyed by (fingerprint, method, domain, seed, index): the fingerprint
(`bench.fingerprint`) identifies the exact setting that produced a record, so records of another
setting are never resumed or counted. Records without one (written before record version 2) are
kept in the file and ignored.
"""
from __future__ import annotations

import json
import os

from metatpt_jax.bench import storage

KEY_FIELDS = ("fingerprint", "method", "domain", "seed", "index")
PATTERN = "samples*.jsonl"


SETTINGS_FILE = "settings.json"  # fingerprint -> setting, beside the records

def record_key(rec: dict) -> tuple:
  return tuple(rec.get(f) for f in KEY_FIELDS)


def file_name(process_index: int = 0, process_count: int = 1) -> str:
  if process_count == 1:
    return "samples.jsonl"
  return f"samples.p{process_index}-of-{process_count}.jsonl"


def _read_lines(path: str, repair: bool) -> list[dict]:
  data = storage.read_bytes(path)
  complete, _, partial = data.rpartition(b"\n")
  if partial and repair:  # a write cut off mid-line: drop it so the file stays valid JSONL
    with open(storage.local(path), "r+b") as f:
      f.truncate(len(complete) + (1 if complete else 0))
  return [json.loads(line) for line in complete.splitlines() if line.strip()]


class RecordStore:
  """All records of a benchmark directory; appends go to this process's own file."""

  def __init__(self, directory: str, process_index: int = 0, process_count: int = 1,
               read_only: bool = False):
    """read_only: only read (a reader beside a running benchmark must not cut the line that
    the benchmark is writing, as the repair of this process's own file would)."""
    self.directory = directory
    if not read_only:
      storage.makedirs(directory)
    self.path = storage.join(directory, file_name(process_index, process_count))
    self.records: dict[tuple, dict] = {}
    self.legacy = 0  # records without a fingerprint: ignored
    paths = storage.glob(directory, PATTERN)
    # an object store's parts of this process: <name>.<part>.jsonl, the next one numbered after
    stem = self.path[:-len(".jsonl")] + "."
    self._parts = [int(p[len(stem):-len(".jsonl")]) for p in paths
                   if p.startswith(stem) and p[len(stem):-len(".jsonl")].isdigit()]
    for path in paths:
      for rec in _read_lines(path, repair=path == self.path and not read_only
                             and not storage.is_url(path)):
        if "fingerprint" not in rec:
          self.legacy += 1
          continue
        self.records.setdefault(record_key(rec), rec)

  def done(self, fingerprint: str, method: str, domain: str, seed: int) -> set[int]:
    head = (fingerprint, method, domain, seed)
    return {k[4] for k in self.records if k[:4] == head}

  def append(self, recs: list[dict]) -> None:
    fresh = [r for r in recs if record_key(r) not in self.records]
    if not fresh:
      return
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in fresh)
    if storage.is_url(self.path):  # one object per batch: an object store cannot append
      part = max(self._parts, default=-1) + 1
      storage.write_bytes(f"{self.path[:-len('.jsonl')]}.{part:06d}.jsonl", text.encode())
      self._parts.append(part)
    else:
      with open(self.path, "a") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    for r in fresh:
      self.records[record_key(r)] = r

  def all(self) -> list[dict]:
    return sorted(self.records.values(), key=lambda r: tuple(str(x) for x in record_key(r)[:4])
                  + (r["index"],))

  def of_cells(self, fingerprints) -> list[dict]:
    """Records whose fingerprint is one of `fingerprints` (this run's cells)."""
    wanted = set(fingerprints)
    return [r for r in self.all() if r["fingerprint"] in wanted]

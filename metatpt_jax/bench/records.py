"""Append-only per-sample results (JSONL) that make an interrupted benchmark resumable.

Every batch's records are appended and fsync'ed before the next batch starts. On restart the
file is read back; a line cut short by a kill is dropped (it was never complete), and records
are keyed by (method, domain, seed, index), so nothing is counted twice.
"""
from __future__ import annotations

import json
import os

KEY_FIELDS = ("method", "domain", "seed", "index")


def record_key(rec: dict) -> tuple:
  return tuple(rec[f] for f in KEY_FIELDS)


class RecordStore:
  def __init__(self, path: str):
    self.path = path
    self.records: dict[tuple, dict] = {}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if os.path.exists(path):
      self._load()

  def _load(self):
    with open(self.path, "rb") as f:
      data = f.read()
    complete, _, partial = data.rpartition(b"\n")
    if partial:  # a write cut off mid-line: drop it so the file stays valid JSONL
      with open(self.path, "r+b") as f:
        f.truncate(len(complete) + (1 if complete else 0))
    for line in complete.splitlines():
      if line.strip():
        rec = json.loads(line)
        self.records[record_key(rec)] = rec

  def done(self, method: str, domain: str, seed: int) -> set[int]:
    return {k[3] for k in self.records if k[:3] == (method, domain, seed)}

  def append(self, recs: list[dict]) -> None:
    fresh = [r for r in recs if record_key(r) not in self.records]
    if not fresh:
      return
    with open(self.path, "a") as f:
      f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in fresh))
      f.flush()
      os.fsync(f.fileno())
    for r in fresh:
      self.records[record_key(r)] = r

  def all(self) -> list[dict]:
    return sorted(self.records.values(), key=record_key)

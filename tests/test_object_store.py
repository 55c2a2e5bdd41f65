"""A benchmark written to an object store URL (gs://) through etils' epath.

The store is faked in memory with fsspec's MemoryFileSystem registered for gs:// and refusing,
as Cloud Storage does, to append to an object. A run killed mid-stream and resumed on the URL
must give the records of the same run on local disk, and the tables must be written there.
"""
import os
import sys

import fsspec
import pytest
from etils.epath import backend as epath_backend
from fsspec.implementations.memory import MemoryFileSystem

from metatpt_jax.bench import records, runner, storage, summarize
from metatpt_jax.errors import UserError
from tests import test_bench, test_tda_bench

setup = test_bench.setup  # the tiny checkpoint and 12-image folder domain
URL = "gs://bucket/run"


class FakeGCS(MemoryFileSystem):
  """gs:// in memory; like Cloud Storage, an object is written whole and never appended to."""
  protocol = ("gs", "gcs")
  store = {}
  pseudo_dirs = [""]
  opened = []  # every mode an object was opened with

  def __init__(self, *args, finalize_on_close=None, **kwargs):
    del finalize_on_close  # what epath passes to gcsfs
    super().__init__(*args, **kwargs)

  def _open(self, path, mode="rb", **kwargs):
    FakeGCS.opened.append(mode)
    if "a" in mode or "+" in mode:
      raise OSError(f"{path}: a Cloud Storage object cannot be appended to")
    return super()._open(path, mode, **kwargs)


def _clear_epath_cache():
  type(epath_backend.fsspec_backend)._get_filesystem.cache_clear()


@pytest.fixture
def fake_gcs(monkeypatch):
  FakeGCS.store.clear()
  FakeGCS.opened.clear()
  registered = sys.modules["fsspec.registry"]._registry  # protocol -> class, filled on use
  before = {name: registered.get(name) for name in ("gs", "gcs")}
  for name in before:
    fsspec.register_implementation(name, FakeGCS, clobber=True)
  _clear_epath_cache()
  yield FakeGCS
  for name, cls in before.items():  # back to fsspec's own (gcsfs, absent here)
    if cls is None:
      registered.pop(name, None)
    else:
      registered[name] = cls
  _clear_epath_cache()


def _tda_records(store):
  return sorted((r["method"], r["index"], r["prediction"], round(r["confidence"], 6))
                for r in store.all())


def test_a_run_on_gs_is_killed_resumed_and_equals_the_local_run(setup, tmp_path, fake_gcs,
                                                                 monkeypatch):
  """bench_tiny:tda (zero-shot + TDA, an online stream with saved states) on gs://."""
  monkeypatch.chdir(tmp_path)  # nothing may land in a local folder named "gs:"
  runner.run(test_tda_bench._cfg(setup, tmp_path / "local"))
  local = _tda_records(records.RecordStore(str(tmp_path / "local")))

  with pytest.raises(KeyboardInterrupt):
    test_tda_bench.run_killed_at_second_tda_batch(test_tda_bench._cfg(setup, URL), monkeypatch)
  parts_before = storage.glob(URL, records.PATTERN)
  text = runner.run(test_tda_bench._cfg(setup, URL))  # resumes from the saved stream state

  assert _tda_records(records.RecordStore(URL, read_only=True)) == local
  assert "| tda |" in text
  names = storage.listdir(URL)
  for name in ("results.json", "results.md", "accuracy.png", "settings.json"):
    assert name in names and storage.read_bytes(storage.join(URL, name))
  parts = storage.glob(URL, records.PATTERN)  # one object per batch, numbered on
  assert parts[:len(parts_before)] == parts_before and len(parts) > len(parts_before)
  assert [p.rsplit("/", 1)[1] for p in parts][:2] == ["samples.000000.jsonl",
                                                     "samples.000001.jsonl"]
  assert any(n.endswith(".npz") for n in storage.listdir(storage.join(URL, "streams")))
  assert not any("a" in mode for mode in FakeGCS.opened)
  assert not os.path.exists(tmp_path / "gs:")

  summarize.main([URL])  # the tables are read back from the store too


def test_processes_write_their_own_objects_and_a_restart_numbers_on(fake_gcs):
  rec = lambda i: dict(fingerprint="f", method="m", domain="d", seed=0, index=i, prediction=0)
  for pid in (0, 1):
    records.RecordStore(URL, pid, 2).append([rec(2 * pid), rec(2 * pid + 10)])
  again = records.RecordStore(URL, 0, 2)  # a restarted process 0
  again.append([rec(0), rec(4)])  # rec(0) is already recorded: only rec(4) is written
  names = [p.rsplit("/", 1)[1] for p in storage.glob(URL, records.PATTERN)]
  assert names == ["samples.p0-of-2.000000.jsonl", "samples.p0-of-2.000001.jsonl",
                   "samples.p1-of-2.000000.jsonl"]
  assert sorted(r["index"] for r in records.RecordStore(URL, read_only=True).all()) == [
      0, 2, 4, 10, 12]


def test_a_url_without_its_driver_is_one_clear_line(setup, tmp_path):
  """gcsfs is not installed here (nor TensorFlow): say so and how to go on."""
  _clear_epath_cache()
  cfg = test_tda_bench._cfg(setup, "gs://bucket/run")
  with pytest.raises(UserError, match=r"gs://bucket/run.*pip install 'metatpt-jax\[gcs\]'"):
    runner.run(cfg)
  with pytest.raises(UserError, match="ftp:// is not an object store"):
    storage.exists("ftp://host/dir")

"""TDA through the benchmark runner: one stream, its state saved after every batch, and a run
killed mid-stream that resumes to the uninterrupted run's records."""
import json
import types

import pytest

from metatpt_jax import adapt
from metatpt_jax.bench import records, runner
from metatpt_jax.errors import UserError
from tests import test_bench
from tests.config_files import config_module

NUM_IMAGES = test_bench.NUM_IMAGES


# The tiny checkpoint and 12-image folder domain of the benchmark's end-to-end tests.
setup = test_bench.setup


def _cfg(setup, out):
  cfg = config_module("bench_tiny").get_config("tda")
  cfg.model.checkpoint = str(setup / "ckpt")
  cfg.data.domains = (f"folder:{setup / 'images'}:clean",)
  cfg.data.num_images = NUM_IMAGES
  cfg.plot_views = False
  cfg.output_dir = str(out)
  return cfg


def _tda_records(out):
  recs = records.RecordStore(str(out)).records.values()
  return sorted((r["index"], r["prediction"], round(r["confidence"], 6)) for r in recs
                if r["method"] == "tda")


def run_killed_at_second_tda_batch(cfg, monkeypatch):
  """runner.run(cfg), killed (KeyboardInterrupt) when TDA's second batch of records is about to
  be written: after that batch's stream state was saved. `append` is restored afterwards."""
  appends = {"tda": 0}
  real_append = records.RecordStore.append

  def append_then_die(self, recs):
    if recs and recs[0]["method"] == "tda":
      appends["tda"] += 1
      if appends["tda"] == 2:
        raise KeyboardInterrupt("killed")
    return real_append(self, recs)

  with monkeypatch.context() as patch:
    patch.setattr(records.RecordStore, "append", append_then_die)
    runner.run(cfg)


def test_a_killed_stream_resumes_to_the_uninterrupted_records(setup, tmp_path, monkeypatch):
  runner.run(_cfg(setup, tmp_path / "whole"))
  whole = _tda_records(tmp_path / "whole")
  assert len(whole) == NUM_IMAGES

  # Killed after TDA's second batch's state was saved but before its records were written.
  with pytest.raises(KeyboardInterrupt):
    run_killed_at_second_tda_batch(_cfg(setup, tmp_path / "cut"), monkeypatch)
  assert len(_tda_records(tmp_path / "cut")) == 4
  saved = sorted(p.name for p in (tmp_path / "cut" / "streams").iterdir())
  assert [name.rsplit("_", 1)[1] for name in saved] == ["4.npz", "8.npz"], saved
  runner.run(_cfg(setup, tmp_path / "cut"))  # resumes from the state after its 4 records
  assert _tda_records(tmp_path / "cut") == whole


def test_a_stream_without_its_saved_state_says_how_to_recover(setup, tmp_path):
  runner.run(_cfg(setup, tmp_path))
  for path in (tmp_path / "streams").iterdir():
    path.unlink()
  lines = (tmp_path / records.file_name()).read_text().splitlines()
  tda_lines = [line for line in lines if json.loads(line)["method"] == "tda"]
  keep = [line for line in lines if line not in tda_lines[4:]]
  (tmp_path / records.file_name()).write_text("\n".join(keep) + "\n")
  with pytest.raises(UserError, match="delete the cell's records"):
    runner.run(_cfg(setup, tmp_path))


def test_tda_refuses_to_split_one_stream_over_devices(setup, tmp_path):
  _, spec = runner.methods_lib.method_spec(_cfg(setup, tmp_path).methods.tda)
  assert adapt._stream_step("tda", spec, None, types.SimpleNamespace(size=1))
  with pytest.raises(UserError, match="num_devices=1"):
    adapt._stream_step("tda", spec, None, types.SimpleNamespace(size=8))


def test_on_several_devices_the_stream_runs_on_one_and_the_episodic_methods_on_all(setup,
                                                                                  tmp_path):
  """bench_tiny:tda (zero-shot + TDA) on 4 fake devices: no refusal, and the records equal the
  one-device run's (TDA's stream on one device, zero-shot split over four)."""
  one, four = tmp_path / "one", tmp_path / "four"
  test_bench._run(test_bench._cmd(setup, one, ":tda"), env=test_bench._env(1))
  test_bench._run(test_bench._cmd(setup, four, ":tda"), env=test_bench._env(4))
  test_bench._same_records(test_bench._records(one), test_bench._records(four))
  assert {r["method"] for r in test_bench._records(four)} == {"zero_shot", "tda"}

"""The benchmark command end to end on a tiny random CLIP and an image-folder domain."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

from metatpt_jax.bench import records
from metatpt_jax.clip import checkpoint, config, model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  base = tmp_path_factory.mktemp("bench")
  arch = config.get_arch("tiny")
  checkpoint.save_hf(model.init_params(jax.random.key(0), arch), arch, str(base / "ckpt"))
  rng = np.random.default_rng(0)
  for name in ("cat", "dog", "sea lion"):
    os.makedirs(base / "images" / name)
    for i in range(4):
      pixels = rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(base / "images" / name / f"{i}.png")
  return base


def _cmd(setup, out, variant=":quick", extra=()):
  return [sys.executable, "-m", "metatpt_jax.bench.cli",
          f"--config={ROOT}/configs/bench_tiny.py{variant}",
          f"--config.model.checkpoint={setup / 'ckpt'}",
          f"--config.data.domains=('folder:{setup / 'images'}:clean',)",
          "--config.data.num_images=12", "--config.plot_views=False",
          f"--config.output_dir={out}", *extra]


def _run(cmd):
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def _records(out):
  return records.RecordStore(os.path.join(out, "samples.jsonl")).all()


def test_bench_writes_results(setup, tmp_path):
  out = tmp_path / "run"
  stdout = _run(_cmd(setup, out, extra=["--config.plot_views=True"]))
  assert "| zero_shot |" in stdout and "| metatpt |" in stdout
  results = json.loads((out / "results.json").read_text())
  assert set(results["summary"]) == {"zero_shot", "tpt", "metatpt"}
  recs = _records(out)
  assert len(recs) == 3 * 12  # every sample of every method exactly once
  for f in ("accuracy.png", "views_metatpt.png", "results.md"):
    assert (out / f).stat().st_size > 0


def test_killed_run_resumes_to_the_uninterrupted_result(setup, tmp_path):
  full, resumed = tmp_path / "full", tmp_path / "resumed"
  _run(_cmd(setup, full))
  proc = subprocess.Popen(_cmd(setup, resumed), cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  path = resumed / "samples.jsonl"
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    if path.exists() and len(path.read_text().splitlines()) >= 4:
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the run finished before it could be interrupted"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  partial = len(_records(resumed))
  assert 4 <= partial < 36
  with open(path, "a") as f:  # as if the kill had landed mid-write
    f.write('{"method": "tpt", "dom')
  _run(_cmd(setup, resumed))
  a, b = _records(full), _records(resumed)
  assert [records.record_key(r) for r in a] == [records.record_key(r) for r in b]
  assert [r["prediction"] for r in a] == [r["prediction"] for r in b]
  np.testing.assert_allclose([r["confidence"] for r in a], [r["confidence"] for r in b],
                             rtol=1e-5)  # vmap partners differ after resuming; sums may reorder
  sa = json.loads((full / "results.json").read_text())["summary"]
  sb = json.loads((resumed / "results.json").read_text())["summary"]
  for method in sa:
    assert sa[method]["mean/acc"] == sb[method]["mean/acc"]


def test_unknown_method_kind_is_named(setup, tmp_path):
  proc = subprocess.run(_cmd(setup, tmp_path / "y", extra=["--config.methods.tpt.kind=tptt"]),
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0 and "tptt" in proc.stderr

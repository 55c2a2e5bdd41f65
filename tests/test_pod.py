"""A simulated pod: two hosts of four devices each run a paper config on an image folder into one
shared output directory; the pod is preempted mid-run (both processes killed) and the run is
resumed by one process, and separately by four: each gives the one-process run's records and
table, every sample exactly once."""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from metatpt_jax.bench import records
from metatpt_jax.data import benchmarks
from tests import test_bench

ROOT = test_bench.ROOT
NUM_IMAGES = 12
setup = test_bench.setup  # the tiny checkpoint


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """UCF101's class folders (every class needs one), three of them holding four JPEGs each."""
  base = tmp_path_factory.mktemp("pod") / "ucf"
  rng = np.random.default_rng(1)
  for c, name in enumerate(benchmarks.load_classes("ucf101")["label_names"]):
    (base / name).mkdir(parents=True)
    for i in range(4 if c < 3 else 0):
      Image.fromarray(rng.integers(0, 256, (26 + i, 30, 3), dtype=np.uint8)).save(
          base / name / f"{i}.jpg")
  return base


def _cmd(setup, folder, out):
  return [sys.executable, "-m", "metatpt_jax.bench.cli",
          f"--config={ROOT}/configs/paper.py:ucf101,tpt",
          f"--config.model.checkpoint={setup / 'ckpt'}",
          f"--config.data.domains=('paper:ucf101:{folder}',)",
          f"--config.data.num_images={NUM_IMAGES}", "--config.batch_size=4",
          "--config.data.canvas_size=64", "--config.progress_bar=False",
          "--config.methods.tpt.n_views=8", "--config.methods.tpt.selection_ratio=0.25",
          test_bench.TPT_EPS,  # records compared to fp32 across device counts: see test_bench
          f"--config.output_dir={out}"]


def _start(cmd, num_processes, devices):
  """num_processes processes of `devices` fake devices each, one jax.distributed job."""
  extra = {}
  if num_processes > 1:
    extra = dict(JAX_COORDINATOR_ADDRESS=f"localhost:{test_bench._free_port()}",
                 JAX_NUM_PROCESSES=str(num_processes))
  return [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=test_bench._env(
                               devices, HF_HUB_OFFLINE="1", **extra,
                               **({"JAX_PROCESS_ID": str(i)} if num_processes > 1 else {})))
          for i in range(num_processes)]


def _finish(procs):
  outs = [p.communicate(timeout=900) for p in procs]
  assert [p.returncode for p in procs] == [0] * len(procs), [o[1][-2000:] for o in outs]
  return outs


def _summary(out):
  return json.loads((out / "results.json").read_text())["summary"]


def _keys(out):
  recs = records.RecordStore(str(out), read_only=True).all()
  return sorted(records.record_key(r) for r in recs)


@pytest.mark.slow
def test_a_preempted_pod_resumes_on_one_or_four_processes(setup, folder, tmp_path):
  reference = tmp_path / "reference"
  _finish(_start(_cmd(setup, folder, reference), 1, 1))

  killed = tmp_path / "killed"
  procs = _start(_cmd(setup, folder, killed), 2, 4)
  first = killed / records.file_name(1, 2)
  deadline = time.time() + 600
  while time.time() < deadline and not (first.exists() and first.read_text().count("\n") >= 4):
    assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs]
    time.sleep(0.05)
  for p in procs:  # the pod is preempted: both hosts go down
    p.kill()
    p.communicate()
  # A kill leaves a prefix of each process's append-only file. A tiny model may finish its last
  # batch before the kill lands, so the cut point is made deterministic: host 1's file keeps its
  # first batch and a half-written line, as a kill during its second batch leaves it.
  lines = first.read_text().splitlines()
  first.write_text("\n".join(lines[:4]) + '\n{"method": "tpt", "dom')
  (killed / "results.json").unlink(missing_ok=True)
  partial = records.RecordStore(str(killed), read_only=True).all()
  assert 4 <= len(partial) < NUM_IMAGES

  for name, num_processes, devices in (("one", 1, 1), ("four", 4, 1)):
    out = tmp_path / name
    shutil.copytree(killed, out)
    _finish(_start(_cmd(setup, folder, out), num_processes, devices))
    got = records.RecordStore(str(out), read_only=True).all()
    want = records.RecordStore(str(reference), read_only=True).all()
    assert _keys(out) == _keys(reference)  # every sample exactly once
    test_bench._same_records(got, want)
    got_table, want_table = _summary(out)["tpt"], _summary(reference)["tpt"]
    assert got_table.keys() == want_table.keys()
    for key, value in want_table.items():  # the same table: accuracy exact, ECE to fp32
      if key.endswith("/acc"):
        assert got_table[key] == value, (name, key)
      elif key.endswith("/ece"):
        np.testing.assert_allclose(got_table[key][0], value[0], rtol=1e-4)
    assert len([f for f in os.listdir(out) if f.startswith("samples")]) >= 2

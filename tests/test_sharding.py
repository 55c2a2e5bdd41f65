"""Sharded adaptation steps equal unsharded ones: 8 fake CPU devices, and 2 processes.

Both run in subprocesses (tests/scripts/sharded_step.py): the CPU device count and the
distributed runtime must be set before JAX first runs anything, which in this pytest process
has long happened.
"""
from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT_MODULE = "tests.scripts.sharded_step"
METHODS = ("zero_shot", "tpt", "metatpt", "zero", "mta")
# zero_shot has no gradients, so it checks the data plumbing alone; TPT is the adapting method
# that also runs across processes (MetaTPT's sharding differs from TPT's in nothing but cost).
# ZERO and MTA: the training-free baselines, whose loops (MTA's fixed points under lax.scan)
# must type-check under shard_map's device-variance rules.
DISTRIBUTED_METHODS = ("zero_shot", "tpt")
# Each device runs the per-sample function on its own rows: batched matmuls over 1 row instead
# of 8 may sum in another order, so fp32 rounding differs (measured <= 1e-6 relative with the
# state made device-varying); a sample mixed up with another changes logits by O(1).
RTOL = 1e-5
TIMEOUT_S = 600  # generous: other jobs share the 2 cores; a normal run takes ~1 minute


def _env():
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  # The script sets its own device count; other flags (the tests' compile settings) stay.
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if "device_count" not in f)
  return env


def _tail(text, lines=30):
  return "\n".join(text.strip().splitlines()[-lines:])


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def fake_devices(tmp_path_factory):
  out = tmp_path_factory.mktemp("sharding") / "fake.npz"
  proc = subprocess.run(
      [sys.executable, "-m", SCRIPT_MODULE, "fake", "--devices", "8", "--out", str(out),
       "--methods", ",".join(METHODS)],
      cwd=REPO, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
  assert proc.returncode == 0, _tail(proc.stderr)
  return dict(np.load(out))


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
  directory = tmp_path_factory.mktemp("distributed")
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", SCRIPT_MODULE, "distributed", "--process-id", str(i),
       "--num-processes", "2", "--port", str(port), "--devices", "2",
       "--methods", ",".join(DISTRIBUTED_METHODS), "--out", str(directory / f"p{i}.npz")],
      cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  logs = []
  try:
    for proc in procs:
      logs.append(proc.communicate(timeout=TIMEOUT_S))
  finally:
    for proc in procs:  # never leave a peer waiting on the coordinator
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  for i, (proc, (_, stderr)) in enumerate(zip(procs, logs)):
    assert proc.returncode == 0, f"process {i} failed:\n{_tail(stderr)}"
  return [dict(np.load(directory / f"p{i}.npz")) for i in range(2)]


def _assert_close(got, want, label):
  err = np.abs(got - want).max() / np.abs(want).max()
  assert err <= RTOL, f"{label}: relative error {err:.2e}"
  return err


@pytest.mark.parametrize("method", METHODS)
def test_fake_devices_sharded_equals_unsharded(fake_devices, method):
  r = {k.split("/", 1)[1]: v for k, v in fake_devices.items() if k.startswith(method + "/")}
  assert int(r["num_shards"]) == 8  # the batch really was spread over all devices
  err = _assert_close(r["sharded/logits"], r["unsharded/logits"], f"{method} logits")
  np.testing.assert_array_equal(r["sharded/prediction"], r["unsharded/prediction"])
  for name in ("loss", "zero_shot_logits"):
    if f"unsharded/{name}" in r:
      _assert_close(r[f"sharded/{name}"], r[f"unsharded/{name}"], f"{method} {name}")
  if "unsharded/selected" in r:
    np.testing.assert_array_equal(r["sharded/selected"], r["unsharded/selected"])
  print(f"{method}: 8 devices vs 1, max relative logit error {err:.1e}")


@pytest.mark.parametrize("method", DISTRIBUTED_METHODS)
def test_two_processes_accept_a_global_batch(two_processes, method):
  # The public step validates images on the host; with a batch assembled by
  # sharding.global_batch each process holds only its own rows, and that must be enough.
  for i, r in enumerate(two_processes):
    error = str(r[f"{method}/checked_step_error"])
    assert not error, f"process {i}: make_step(..., mesh) rejected the global batch: {error}"


@pytest.mark.parametrize("method", DISTRIBUTED_METHODS)
def test_two_processes_equal_one_process(two_processes, fake_devices, method):
  # Each process loaded only its half of the samples ...
  halves = [r[f"{method}/local_indices"] for r in two_processes]
  assert len(halves[0]) == len(halves[1]) == 4 and not set(halves[0]) & set(halves[1])
  want = fake_devices[f"{method}/unsharded/logits"]  # one process, one device, no mesh
  for i, r in enumerate(two_processes):
    # ... and after the all-gather both see the whole batch, equal to the single-process run.
    err = _assert_close(r[f"{method}/logits"], want, f"process {i} {method} logits")
    np.testing.assert_array_equal(r[f"{method}/prediction"],
                                  fake_devices[f"{method}/unsharded/prediction"])
    print(f"{method}: process {i} of 2, max relative logit error {err:.1e}")


def test_importing_the_library_leaves_jax_unconfigured():
  # A launcher imports the library, then sets the device count or calls
  # sharding.maybe_initialize_distributed(); both need an uninitialised XLA backend, so no
  # module may create device arrays at import time.
  code = ("import jax\n"
          "import metatpt_jax.adapt, metatpt_jax.tpt, metatpt_jax.metatpt, metatpt_jax.views\n"
          "jax.config.update('jax_num_cpu_devices', 2)\n"
          "assert jax.device_count() == 2\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True,
                        text=True, timeout=120, check=False)
  assert proc.returncode == 0, _tail(proc.stderr, 3)

"""Every user error of `metatpt-bench` ends with one line on stderr, exit status 2, no traceback.

Each probe is a mistake a person makes (a config field, a domain, a checkpoint, a data set, an
image folder, a method spec); the line must name the problem. The probes run in forked children
of one process (tests/scripts/cli_probes.py), so the whole table costs one JAX import.
`metatpt-pretrain` reports its bad input the same way; its probes fail before any training.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from metatpt_jax.clip import checkpoint, config, model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  base = tmp_path_factory.mktemp("cli_errors")
  arch = config.get_arch("tiny")
  checkpoint.save_hf(model.init_params(jax.random.key(0), arch), arch, str(base / "ckpt"))
  corrupt = base / "corrupt_ckpt"
  corrupt.mkdir()
  (corrupt / "config.json").write_text((base / "ckpt" / "config.json").read_text())
  (corrupt / "model.safetensors").write_bytes(b"not a safetensors file")
  for name in ("cat", "dog"):
    (base / "broken" / name).mkdir(parents=True)
    (base / "broken" / name / "0.jpg").write_bytes(b"\xff\xd8 not a jpeg")
  rng = np.random.default_rng(0)
  for name in ("cat", "dog"):
    (base / "good" / name).mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
        base / "good" / name / "0.png")
  return base


def _base(files, *extra):
  return [f"--config={ROOT}/configs/bench_tiny.py:tpt",
          f"--config.model.checkpoint={files / 'ckpt'}",
          f"--config.data.domains=('folder:{files / 'good'}:clean',)",
          f"--config.output_dir={files / 'out'}", *extra]


# (probe name, arguments after the base ones or None for a bare command, words the line must hold)
PROBES = [
    ("batch size 0", ["--config.batch_size=0"], ["--config.batch_size=0", "positive"]),
    ("batch size not a number", ["--config.batch_size=abc"], ["batch_size", "abc"]),
    ("unknown field", ["--config.nonexist=1"], ["--config.nonexist", "no such config field"]),
    ("misspelt method field", ["--config.methods.tpt.lrr=1"], ["lrr", "Did you mean", "lr"]),
    ("unknown method kind", ["--config.methods.tpt.kind=tptt"], ["tptt", "zero_shot"]),
    ("negative TPT steps", ["--config.methods.tpt.steps=0"], ["steps >= 1"]),
    ("unknown split", ["--config.data.split=val"], ["val", "train"]),
    ("no images", ["--config.data.num_images=0"], ["num_images", "positive"]),
    ("empty seeds", ["--config.seeds=()"], ["seeds", "tuple of integers"]),
    ("too many devices", ["--config.num_devices=99"], ["num_devices=99", "local devices"]),
    ("negative canvas", ["--config.data.canvas_size=-1"], ["canvas_size"]),
    ("unknown source", ["--config.data.domains=('fashoin_mnist:clean',)"],
     ["fashoin_mnist", "valid sources"]),
    ("unknown corruption", ["--config.data.domains=('fashion_mnist:blurr:3',)"],
     ["blurr", "defocus_blur"]),
    ("bad severity", ["--config.data.domains=('fashion_mnist:defocus_blur:9',)"], ["9"]),
    ("unknown paper dataset", ["--config.data.domains=('paper:imagenet_x',)"],
     ["imagenet_x", "imagenet_a"]),
    ("missing folder", ["--config.data.domains=('folder:/nonexistent/pets:clean',)"],
     ["/nonexistent/pets", "does not exist"]),
    ("missing checkpoint", ["--config.model.checkpoint=/nonexistent/ckpt"],
     ["/nonexistent/ckpt", "does not exist"]),
    ("corrupt checkpoint", ["--config.model.checkpoint={corrupt}"], ["model.safetensors"]),
    ("unknown compute dtype", ["--config.model.compute_dtype=fp8"], ["fp8", "float32"]),
    ("unknown matmul precision", ["--config.model.matmul_precision=fast"],
     ["matmul_precision", "'fast'", "highest"]),
    ("folder of unreadable images", ["--config.data.domains=('folder:{broken}:clean',)"],
     ["no readable images", "2 unreadable"]),
    ("extra argument", ["extra"], ["unexpected arguments", "extra"]),
    ("missing config file", "config_file", ["does not exist", "nope.py"]),
    ("unknown config variant", "variant", ["Unknown variant", "zz"]),
    ("no --config", "bare", ["--config is required"]),
]


def _argv(files, probe):
  if probe == "config_file":
    return [f"--config={ROOT}/configs/nope.py"]
  if probe == "variant":
    return [f"--config={ROOT}/configs/bench_tiny.py:zz"]
  if probe == "bare":
    return []
  subs = dict(corrupt=files / "corrupt_ckpt", broken=files / "broken")
  return _base(files, *[a.format(**subs) for a in probe])


@pytest.fixture(scope="module")
def results(files):
  probes = [_argv(files, p) for _, p, _ in PROBES]
  (files / "probes.json").write_text(json.dumps(probes))
  subprocess.run([sys.executable, "-m", "tests.scripts.cli_probes", str(files / "probes.json"),
                  str(files / "results.json")], cwd=ROOT, check=True, timeout=600,
                 env=dict(os.environ, JAX_PLATFORMS="cpu"))
  out = json.loads((files / "results.json").read_text())
  for (name, _, _), res in zip(PROBES, out):  # the table of the closing note
    print(f"{name}: {res['stderr'].strip()}")
  return out


@pytest.mark.parametrize("i", range(len(PROBES)), ids=[p[0] for p in PROBES])
def test_user_error_is_one_line_with_exit_2(results, i):
  name, _, words = PROBES[i]
  res = results[i]
  lines = [line for line in res["stderr"].splitlines() if line.strip()]
  errors = [line for line in lines if "error:" in line]
  assert res["rc"] == 2, (name, res)
  assert "Traceback" not in res["stderr"], (name, res["stderr"])
  assert len(errors) == 1 and lines[-1] == errors[0], (name, lines)
  # Warnings naming skipped files may precede the error; nothing else may.
  assert all("WARNING" in line for line in lines[:-1]), (name, lines)
  for word in words:
    assert word in res["stderr"], (name, word, res["stderr"])


def test_debug_flag_shows_the_traceback(files, tmp_path):
  proc = subprocess.run([sys.executable, "-m", "metatpt_jax.bench.cli",
                         *_base(files, "--config.batch_size=0"), "--debug"], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0 and "Traceback" in proc.stderr


PRETRAIN_PROBES = [
    ("unknown field", ["{config}", "--config.no_such_field=1"],
     ["--config.no_such_field", "no such config field"]),
    ("missing config file", ["--config={root}/configs/nope.py"], ["nope.py", "does not exist"]),
    ("batch size 0", ["{config}", "--config.batch_size=0"], ["--config.batch_size=0", "positive"]),
    ("workdir under a file", ["{config}", "--config.workdir={tmp}/file/run"],
     ["--config.workdir", "writable directory"]),
]


def _pretrain(args, tmp_path):
  (tmp_path / "file").write_text("a file where the workdir's parent should be")
  subs = dict(config=f"--config={ROOT}/configs/pretrain_small.py:tiny", root=ROOT, tmp=tmp_path)
  return subprocess.run([sys.executable, "-m", "metatpt_jax.pretrain.cli",
                         *[a.format(**subs) for a in args]], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))


@pytest.mark.parametrize("args, words", [p[1:] for p in PRETRAIN_PROBES],
                         ids=[p[0] for p in PRETRAIN_PROBES])
def test_pretrain_user_error_is_one_line_with_exit_2(args, words, tmp_path):
  proc = _pretrain(args, tmp_path)
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert proc.returncode == 2, (proc.returncode, proc.stderr)
  assert "Traceback" not in proc.stderr, proc.stderr
  assert len(lines) == 1 and lines[0].startswith("metatpt-pretrain: error: "), lines
  for word in words:
    assert word in lines[0], (word, lines[0])
  assert not (tmp_path / "file" / "run").exists() and not proc.stdout  # nothing was started


def test_pretrain_debug_flag_shows_the_traceback(tmp_path):
  proc = _pretrain(["{config}", "--config.batch_size=0", "--debug"], tmp_path)
  assert proc.returncode != 0 and "Traceback" in proc.stderr and "UserError" in proc.stderr


def test_metatpt_without_a_generator_says_how_to_make_one():
  from metatpt_jax import adapt, metatpt
  from tests import method_helpers as h
  frozen, mspec = h.tiny_frozen()
  spec = metatpt.MetaTPTSpec(n_views=4, selection_ratio=0.5)
  step = adapt.make_step("metatpt", spec, mspec)
  batch = {"image": np.asarray(h.random_images(0, 2)), "index": np.arange(2)}
  with pytest.raises(ValueError, match="init_generator"):
    step(adapt.AdaptState(frozen), batch, jax.random.key(0))

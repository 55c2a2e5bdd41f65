"""tools/backbone_table_v3.py: backbones told apart by their settings, an `adapt` other than the
backbone's default labelled, and `--pair` paired over the images both labels hold."""
import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "backbone_table_v3.py"
DOMAIN = "artwork:symbola:plain:50_classes"


def _tool():
  spec = importlib.util.spec_from_file_location("backbone_table_v3", TOOL)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _maple(adapt):
  return {"prompt": {"backbone": {"name": "maple", "adapt": list(adapt)}}}


def test_backbone_labels():
  tool = _tool()
  assert tool.backbone_of({"prompt": {"init": "a photo of a"}}) == "clip"
  assert tool.backbone_of({"prompt": {"init": "x.npz", "init_sha256": "ab"}}) == "coop"
  assert tool.backbone_of(_maple(("ctx", "proj", "deep_text", "deep_proj"))) == "maple"
  assert tool.backbone_of(_maple(("ctx",))) == "maple (adapts ctx)"
  assert tool.backbone_of({"prompt": {"backbone": {"name": "mmrl", "adapt": ["rep"]}}}) == "mmrl"


def _write(tmp_path, name, right):
  """Records of zero-shot/TPT/MetaTPT on 4 images under MaPLe adapting `name`'s tensors; `right`
  maps method -> which images it gets right."""
  adapt = ("ctx",) if name == "ctx" else ("ctx", "proj", "deep_text", "deep_proj")
  settings, recs = {}, []
  for method, correct in right.items():
    fp = f"{name}-{method}"
    settings[fp] = dict(_maple(adapt), method={"kind": method, "spec": None}, seed=0,
                        data={"domain": DOMAIN, "num_images": 4})
    recs += [{"fingerprint": fp, "method": method, "domain": DOMAIN, "seed": 0, "index": i,
              "label": 0, "prediction": int(i not in correct), "correct": i in correct,
              "confidence": 0.5}
             for i in range(4)]
  samples, settings_path = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.json"
  samples.write_text("".join(json.dumps(r) + "\n" for r in recs))
  settings_path.write_text(json.dumps(settings))
  return ["--records", str(samples), "--settings", str(settings_path)]


def test_pair_differences_are_paired_per_image(tmp_path):
  zero = {0, 1}
  args = (_write(tmp_path, "all", {"zero_shot": zero, "tpt": {0}, "metatpt": {0}})
          + _write(tmp_path, "ctx", {"zero_shot": zero, "tpt": {0, 1, 2}, "metatpt": zero}))
  out = subprocess.run([sys.executable, str(TOOL), *args, "--pair", "maple (adapts ctx)",
                        "maple"], capture_output=True, text=True, cwd=ROOT, check=True).stdout
  rows = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in out.splitlines()}
  assert "-25.0" in rows[("maple", "TPT - zero-shot")]
  assert "+25.0" in rows[("maple (adapts ctx)", "TPT - zero-shot")]
  assert "+50.0" in rows[("maple (adapts ctx) - maple", "tpt")]  # images 1 and 2 gained
  assert "+25.0" in rows[("maple (adapts ctx) - maple", "metatpt")]
  assert "+0.0 ± 0.0" in rows[("maple (adapts ctx) - maple", "zero_shot")]


def test_pair_names_what_the_records_hold(tmp_path):
  args = _write(tmp_path, "all", {"zero_shot": {0}, "tpt": {0}, "metatpt": {0}})
  proc = subprocess.run([sys.executable, str(TOOL), *args, "--pair", "mmrl", "maple"],
                        capture_output=True, text=True, cwd=ROOT)
  assert proc.returncode != 0 and "'maple'" in proc.stderr.splitlines()[-1]


@pytest.mark.parametrize("dev", [False, True], ids=["test", "dev"])
def test_committed_records_make_the_table(dev):
  out = subprocess.run([sys.executable, str(TOOL)] + (["--dev"] if dev else []),
                       capture_output=True, text=True, cwd=ROOT, check=True).stdout
  labels = {line.split("|")[1].strip() for line in out.splitlines()[2:]}
  assert {"clip", "coop", "maple"} <= labels

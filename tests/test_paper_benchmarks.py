"""The paper's benchmarks: class-name files, the dataset registry, clear errors, and the
benchmark command end to end per dataset family on tfds mock data and a tiny random CLIP."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from metatpt_jax.bench import records, runner
from metatpt_jax.clip import checkpoint, config, hub, model
from metatpt_jax.data import benchmarks, load_domain, sources
from metatpt_jax.data.domains import batch_inputs
from tests.config_files import ROOT, config_module

# Class counts as CLIP/CoOp/TPT evaluate them (Caltech101 without its background class).
COUNTS = dict(imagenet=1000, imagenet_a=200, imagenet_v2=1000, imagenet_r=200,
              imagenet_sketch=1000, oxford_flowers=102, dtd=47, oxford_pets=37,
              stanford_cars=196, ucf101=101, caltech101=100, food101=101, sun397=397,
              fgvc_aircraft=100, eurosat=10)
TINY_METHODS = dict(n_views=8, selection_ratio=0.25)


def _paper_config(arg):
  return config_module("paper").get_config(arg)


@pytest.mark.parametrize("name", list(benchmarks.BENCHMARKS))
def test_class_files_have_the_published_counts_and_unique_names(name):
  classes = benchmarks.load_classes(name)
  names, labels = classes["classnames"], classes["label_names"]
  assert len(names) == len(labels) == COUNTS[name] == benchmarks.BENCHMARKS[name].num_classes
  assert len(set(labels)) == len(labels)
  # Unique except CLIP's two known ImageNet collisions, which the file declares.
  declared = classes.get("duplicate_classnames", [])
  assert len(set(names)) == len(names) - len(declared)
  assert declared in ([], ["missile", "sunglasses"])
  assert all(n == n.strip() and n and "_" not in n for n in names)
  assert classes["templates"]["tpt"] == ["a photo of a {}."]  # TPT's single prompt
  assert all(t.count("{}") == 1 for group in classes["templates"].values() for t in group)
  assert classes["source"]


def test_imagenet_subsets_are_the_200_class_masks():
  full = benchmarks.load_classes("imagenet")
  assert len(full["templates"]["clip"]) == 80 and len(set(full["templates"]["clip"])) == 80
  assert full["label_names"] == sorted(full["label_names"])  # WordNet ids in tfds label order
  for name in ("imagenet_a", "imagenet_r"):
    sub = benchmarks.load_classes(name)
    idx = sub["imagenet_indices"]
    assert len(idx) == 200 and idx == sorted(set(idx)) and 0 <= idx[0] and idx[-1] < 1000
    assert sub["label_names"] == [full["label_names"][i] for i in idx]
    assert sub["classnames"] == [full["classnames"][i] for i in idx]
  a, r = (benchmarks.load_classes(n)["imagenet_indices"] for n in ("imagenet_a", "imagenet_r"))
  assert a[:3] == [6, 11, 13] and a != r  # stingray, goldfinch, junco (TPT: thousand_k_to_200)


@pytest.mark.parametrize("name", [n for n, b in benchmarks.BENCHMARKS.items() if b.tfds_name])
def test_label_names_are_labels_of_the_tfds_builder(name, tmp_path):
  bench = benchmarks.BENCHMARKS[name]
  classes = benchmarks.load_classes(name)
  tfds_names = tfds.builder(bench.tfds_name, data_dir=str(tmp_path)).info.features["label"].names
  lut = benchmarks.label_lookup(classes["label_names"], tfds_names, what=name)
  unused = {tfds_names[i] for i in np.flatnonzero(lut < 0)}
  if bench.num_classes == len(tfds_names) - len(classes.get("ignored_labels", [])):
    assert unused == set(classes.get("ignored_labels", []))  # every kept class is used


def test_registry_covers_the_fifteen_datasets():
  assert set(benchmarks.BENCHMARKS) == set(COUNTS)
  assert len(benchmarks.IMAGENET_VARIANTS) == 5 and len(benchmarks.CROSS_DATASETS) == 10
  assert [b.name for b in benchmarks.BENCHMARKS.values() if b.tfds_name is None] == [
      "ucf101", "fgvc_aircraft"]


def test_paper_config_has_tpt_defaults():
  c = _paper_config("dtd,all")
  assert c.model.checkpoint == "openai/clip-vit-base-patch16" and c.batch_size == 1
  tpt = c.methods.tpt
  assert (tpt.n_views, tpt.selection_ratio, tpt.steps, tpt.lr) == (64, 0.1, 1, 5e-3)
  assert tpt.view_kind == "augmix" and len(c.methods) == 12  # 11 methods + the template ensemble
  assert c.methods.zero_shot_ensemble.templates == "clip"
  assert _paper_config("imagenet_r,tpt").methods.tpt.view_kind == "random_crop"
  with pytest.raises(ValueError, match="Datasets: imagenet, imagenet_a"):
    _paper_config("imagenet_q,tpt")
  with pytest.raises(ValueError, match="Methods: zero_shot, zero_shot_ensemble, tpt"):
    _paper_config("dtd,tptt")


def test_unknown_dataset_name_lists_valid_names():
  with pytest.raises(ValueError, match="valid names: imagenet, imagenet_a.*eurosat"):
    load_domain("paper:imagenet_c")


def test_unprepared_dataset_names_the_tfds_build_command(tmp_path):
  with pytest.raises(sources.MissingSourceError,
                     match=r"tfds build imagenet2012 --manual_dir=\S+ --data_dir="):
    load_domain("paper:imagenet", data_dir=str(tmp_path))
  with pytest.raises(sources.MissingSourceError, match="tfds build dtd --data_dir="):
    load_domain("paper:dtd", data_dir=str(tmp_path))


def test_class_file_count_mismatch_is_named(tmp_path):
  classes = dict(benchmarks.load_classes("dtd"))
  classes["classnames"] = classes["classnames"][:-1]
  classes["label_names"] = classes["label_names"][:-1]
  (tmp_path / "dtd.json").write_text(json.dumps(classes))
  with pytest.raises(benchmarks.ClassNamesError, match="46 class names.*dtd has 47 classes"):
    load_domain("paper:dtd", classnames_dir=str(tmp_path))


def test_labels_outside_the_200_class_subset_are_an_error(tmp_path):
  # tfds mock labels are uniform over ImageNet's 1000 classes, most outside ImageNet-A's 200.
  with tfds.testing.mock_data(num_examples=20):
    with pytest.raises(benchmarks.ClassNamesError, match="outside the 200 classes"):
      load_domain("paper:imagenet_a", data_dir=str(tmp_path))


def test_folder_with_other_class_names_is_an_error(tmp_path):
  (tmp_path / "Archery").mkdir()
  (tmp_path / "Not_A_Class").mkdir()
  with pytest.raises(benchmarks.ClassNamesError, match="Not_A_Class"):
    load_domain(f"paper:ucf101:{tmp_path}")
  with pytest.raises(ValueError, match="give its image folder"):
    load_domain("paper:fgvc_aircraft")


def test_model_id_offline_says_how_to_pass_a_local_path(tmp_path):
  code = ("from metatpt_jax.clip import checkpoint\n"
          "try:\n  checkpoint.load_clip('openai/clip-vit-base-patch16')\n"
          "except checkpoint.CheckpointError as e:\n  print('ERROR', e)\n")
  env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
  assert "ERROR Could not fetch the Hugging Face model 'openai/clip-vit-base-patch16'" in (
      proc.stdout), proc.stderr[-2000:]
  assert "--config.model.checkpoint=/path/to/clip-vit-base-patch16" in proc.stdout
  assert hub.is_model_id("openai/clip-vit-base-patch16")
  assert not hub.is_model_id("./ckpt/x") and not hub.is_model_id("/abs/dir")


# ImageNet indices of ImageNet-A classes 0, 1, 2 and 199, as tfds labels them.
A_LABELS = [6, 11, 13, 988, 6, 11, 13, 988]


def _imagenet_a_source(self, split, decoders=None, **kwargs):
  del self, split, decoders, kwargs
  rng = np.random.default_rng(0)
  return [{"image": rng.integers(0, 256, (30 + 3 * i, 40, 3), dtype=np.uint8), "label": label,
           "file_name": f"{i}.jpg"} for i, label in enumerate(A_LABELS)]


def test_imagenet_a_labels_map_to_the_subset_and_processes_split_the_images(tmp_path):
  with tfds.testing.mock_data(as_data_source_fn=_imagenet_a_source):
    whole = load_domain("paper:imagenet_a", image_size=16, data_dir=str(tmp_path))
    parts = [benchmarks.load_benchmark("paper:imagenet_a", image_size=16,
                                       data_dir=str(tmp_path), process_index=k,
                                       process_count=3) for k in range(3)]
    assert whole.labels.tolist() == [0, 1, 2, 199] * 2
    assert whole.class_names[0] == "stingray" and len(whole.class_names) == 200
    assert whole.images.shape == (8, 16, 16, 3) and whole.images[[0, 7]].dtype == np.uint8
    np.testing.assert_array_equal(np.concatenate([p.labels for p in parts]), whole.labels)
    np.testing.assert_array_equal(np.concatenate([p.images[:] for p in parts]), whole.images[:])
    assert [len(p.labels) for p in parts] == [3, 3, 2]
    # With a canvas, each decoded image travels whole (aspect kept) for TPT's random crops.
    full = load_domain("paper:imagenet_a", image_size=16, data_dir=str(tmp_path), canvas_size=64)
    inputs = batch_inputs(full, np.array([0, 5]))
    assert inputs["canvas"].shape == (2, 64, 64, 3) and inputs["image"].dtype == np.float32
    decoded = _imagenet_a_source(None, None)
    for row, i in enumerate((0, 5)):
      h, w = decoded[i]["image"].shape[:2]
      assert tuple(inputs["extent"][row]) == (h, w)
      np.testing.assert_array_equal(inputs["canvas"][row, :h, :w], decoded[i]["image"])
      assert not inputs["canvas"][row, h:].any() and not inputs["canvas"][row, :, w:].any()


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
  path = tmp_path_factory.mktemp("paper") / "ckpt"
  arch = config.get_arch("tiny")
  checkpoint.save_hf(model.init_params(jax.random.key(0), arch), arch, str(path))
  return path


def _tiny(cfg, ckpt, out, num_images):
  cfg.model.checkpoint = str(ckpt)
  cfg.data.num_images = num_images
  cfg.batch_size = 4
  cfg.output_dir = str(out)
  cfg.progress_bar = False
  cfg.data.canvas_size = 64  # the mock images are at most 51 px: kept whole, as decoded
  for name, method in cfg.methods.items():
    if name != "zero_shot":
      method.update(TINY_METHODS)
    if name.startswith("metatpt"):
      method.generator.hidden = 8
  return cfg


def _check_results(out, num):
  results = json.loads((out / "results.json").read_text())
  assert set(results["summary"]) == {"zero_shot", "tpt", "metatpt"}
  recs = records.RecordStore(str(out)).all()
  assert len(recs) == 3 * num


@pytest.mark.slow
def test_imagenet_family_end_to_end_on_mock_data(tiny_ckpt, tmp_path):
  cfg = _tiny(_paper_config("imagenet_a,main"), tiny_ckpt, tmp_path / "out", 8)
  cfg.data.data_dir = str(tmp_path)
  with tfds.testing.mock_data(as_data_source_fn=_imagenet_a_source):
    text = runner.run(cfg)
  assert "| metatpt |" in text
  _check_results(tmp_path / "out", 8)


@pytest.mark.slow
def test_cross_dataset_family_end_to_end_on_mock_data(tiny_ckpt, tmp_path):
  cfg = _tiny(_paper_config("dtd,main"), tiny_ckpt, tmp_path / "out", 6)
  cfg.data.data_dir = str(tmp_path)
  assert cfg.methods.tpt.view_kind == "augmix"
  with tfds.testing.mock_data(num_examples=6):
    runner.run(cfg)
  _check_results(tmp_path / "out", 6)


@pytest.mark.slow
def test_folder_family_end_to_end_through_the_command(tiny_ckpt, tmp_path):
  rng = np.random.default_rng(0)
  folders = benchmarks.load_classes("ucf101")["label_names"]
  for c, name in enumerate(folders):
    (tmp_path / "ucf" / name).mkdir(parents=True)
    if c < 3:  # a few classes hold images; every class needs its sub-folder
      for i in range(2):
        Image.fromarray(rng.integers(0, 256, (24, 30 + i, 3), dtype=np.uint8)).save(
            tmp_path / "ucf" / name / f"{i}.jpg")
  out = tmp_path / "out"
  overrides = [f"--config.methods.{m}.{k}={v}" for m in ("tpt", "metatpt")
               for k, v in TINY_METHODS.items()] + ["--config.methods.metatpt.generator.hidden=8"]
  cmd = [sys.executable, "-m", "metatpt_jax.bench.cli",
         f"--config={ROOT}/configs/paper.py:ucf101,main",
         f"--config.model.checkpoint={tiny_ckpt}",
         f"--config.data.domains=('paper:ucf101:{tmp_path / 'ucf'}',)",
         "--config.data.num_images=6", "--config.batch_size=3", "--config.progress_bar=False",
         "--config.data.canvas_size=64",
         f"--config.output_dir={out}", *overrides]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                        env=dict(os.environ, HF_HUB_OFFLINE="1"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "| zero_shot |" in proc.stdout
  _check_results(out, 6)

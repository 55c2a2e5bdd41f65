"""Fidelity to the authors' code (docs/REPRODUCING.md, "Fidelity to the authors' code"): TDA's
per-dataset settings, Food101's published label map, the fp16 and accelerator policies, and the
platform in the fingerprint."""
import os

import jax
import numpy as np
import pytest
from PIL import Image

from metatpt_jax.bench import runner
from metatpt_jax.clip import config
from metatpt_jax.data import benchmarks
from tests.config_files import config_module


def _paper_config(arg):
  return config_module("paper").get_config(arg)


# TDA as its authors run it (kdiAAA/TDA configs/*.yaml, datasets/*.py, utils.py): positive-cache
# (alpha, beta), the number of templates of its text classifier (or the single template), and
# the views (64 = the image and 63 AugMix views, 6 most confident averaged).
TDA_AUTHORS = {"imagenet": ((2, 5), 7, 1), "imagenet_a": ((2, 5), 7, 64),
               "imagenet_v2": ((1, 8), 7, 64), "imagenet_r": ((1, 8), 80, 64),
               "imagenet_sketch": ((2.363, 7.45), 80, 64), "caltech101": ((5, 5), 7, 1),
               "dtd": ((2, 3), "{} texture.", 1),
               "eurosat": ((4, 8), "a centered satellite photo of {}.", 1),
               "fgvc_aircraft": ((2, 2), "a photo of a {}, a type of aircraft.", 1),
               "food101": ((1, 1), "a photo of {}, a type of food.", 1),
               "oxford_flowers": ((1, 5), "a photo of a {}, a type of flower.", 1),
               "oxford_pets": ((2, 7), "a photo of a {}, a type of pet.", 1),
               "stanford_cars": ((1, 7), 7, 1), "sun397": ((2, 3), 7, 1),
               "ucf101": ((3, 8), "a photo of a person doing {}.", 1)}


@pytest.mark.parametrize("name", list(TDA_AUTHORS))
def test_paper_tda_is_the_authors_per_dataset_setting(name):
  from metatpt_jax.bench import methods
  (alpha, beta), templates, num_views = TDA_AUTHORS[name]
  _, spec = methods.method_spec(_paper_config(f"{name},tda").methods.tda)
  assert (spec.pos_alpha, spec.pos_beta) == (alpha, beta)
  assert (spec.neg_alpha, spec.neg_beta, spec.pos_shot, spec.neg_shot) == (0.117, 1.0, 3, 2)
  if isinstance(templates, int):
    assert len(spec.templates) == templates and "itap of a {}." in spec.templates
  else:
    assert spec.templates == (templates,)
  assert spec.n_views == num_views and spec.view_kind == "augmix"
  assert spec.num_keep == (6 if num_views == 64 else 1)


def test_fp16_policy_is_the_authors_autocast():
  """`<dataset>,<method>,fp16`: fp32 weights, fp16 matmul inputs, fp32 norms, softmax and
  outputs (CUDA autocast), ZERO's zero temperature the fp16 epsilon; its own output_dir."""
  import jax.numpy as jnp

  from metatpt_jax import adapt, tpt
  from metatpt_jax.bench import methods
  from metatpt_jax.frozen_clip import class_features, encode_images, logits
  from tests import method_helpers as h
  c16, c32 = _paper_config("imagenet_a,all,fp16"), _paper_config("imagenet_a,all")
  assert (c16.model.compute_dtype, c32.model.compute_dtype) == ("float16", "float32")
  assert c16.methods.zero.temperature == 2.0 ** -10 and c32.methods.zero.temperature == 0.0
  assert c16.output_dir != c32.output_dir
  runner.validate_config(c16)
  frozen, mspec32 = h.tiny_frozen(logit_scale=np.log(30.0))
  mspec16 = methods.model_spec(c16.model, mspec32.arch)
  assert mspec16.compute_dtype == jnp.float16
  images = h.random_images(0, 3)
  out = {}
  for name, mspec in (("fp16", mspec16), ("fp32", mspec32)):
    feats = encode_images(frozen, images, mspec)
    out[name] = logits(frozen, feats, class_features(frozen, frozen.ctx_init, mspec))
    assert out[name].dtype == jnp.float32  # outputs stay fp32, as under autocast
  np.testing.assert_allclose(np.asarray(out["fp16"]), np.asarray(out["fp32"]), atol=0.05)
  assert np.abs(np.asarray(out["fp16"]) - np.asarray(out["fp32"])).max() > 0  # really fp16
  # TPT's step runs under fp16 (gradients through fp16 matmuls) and gives finite logits
  step = adapt.make_step("tpt", tpt.TPTSpec(n_views=8, selection_ratio=0.25), mspec16)
  state, result = step(adapt.AdaptState(frozen), {"image": images, "index": jnp.arange(3)},
                       jax.random.key(0))
  assert np.isfinite(np.asarray(result["logits"])).all()


@pytest.mark.parametrize("policy,dtype,precision", [("", "float32", "highest"),
                                                   ("gpu", "bfloat16", "tensorfloat32"),
                                                   ("tpu", "bfloat16", "default")])
def test_accelerator_policies_are_explicit_and_run_on_cpu(policy, dtype, precision):
  """The gpu / tpu variants of a paper config name their compute dtype and matmul precision;
  on CPU their forward keeps float32 outputs of the right shapes."""
  import jax.numpy as jnp

  from metatpt_jax.bench import methods
  from metatpt_jax.frozen_clip import class_features, encode_images, logits
  from tests import method_helpers as h
  cfg = _paper_config("imagenet_r,tpt" + (f",{policy}" if policy else ""))
  runner.validate_config(cfg)
  assert (cfg.model.compute_dtype, cfg.model.matmul_precision) == (dtype, precision)
  frozen, mspec32 = h.tiny_frozen()
  mspec = methods.model_spec(cfg.model, mspec32.arch)
  with jax.default_matmul_precision(cfg.model.matmul_precision):
    feats = encode_images(frozen, h.random_images(0, 2), mspec)
    out = logits(frozen, feats, class_features(frozen, frozen.ctx_init, mspec))
  assert out.shape == (2, len(h.CLASS_NAMES)) and out.dtype == jnp.float32
  assert feats.dtype == jnp.float32 and np.isfinite(np.asarray(out)).all()


def test_platform_enters_the_fingerprint_except_cpu_at_full_precision(monkeypatch):
  """CPU records at float32 precision keep the fingerprints they had before the platform was
  recorded; a TPU, a GPU or a lower precision is another setting."""
  from metatpt_jax.bench import fingerprint, methods
  cfg = _paper_config("dtd,tpt")
  kind, spec = methods.method_spec(cfg.methods.tpt)
  arch = config.get_arch("tiny")
  from metatpt_jax.data.labelled import Domain
  domain = Domain("paper:dtd", np.zeros((2, 4, 4, 3), np.uint8), np.zeros(2, np.int32), ["a"])
  prints = {}
  for name, backend, precision in (("cpu", "cpu", "default"), ("cpu_highest", "cpu", "highest"),
                                   ("cpu_bf16", "cpu", "bfloat16"), ("tpu", "tpu", "default"),
                                   ("gpu", "gpu", "default")):
    monkeypatch.setattr(runner.jax, "default_backend", lambda b=backend: b)
    cfg.model.matmul_precision = precision
    setting = runner.cell_setting(cfg, "tpt", kind, spec, domain, 0, "w", arch)
    assert ("platform" in setting) == (name not in ("cpu", "cpu_highest"))
    prints[name] = fingerprint.fingerprint(setting)
  assert prints["cpu"] == prints["cpu_highest"]
  assert len({prints[k] for k in ("cpu", "cpu_bf16", "tpu", "gpu")}) == 4


def test_food101_published_label_map_swaps_cheesecake_and_cheese_plate(tmp_path):
  """TPT's Food101 class list scores the prompt 'cheesecake' against the cheese_plate images
  and the other way round; label_map='published' reproduces that, 'dataset' does not."""
  rng = np.random.default_rng(0)
  labelled = ("apple_pie", "cheesecake", "cheese_plate")
  for name in benchmarks.load_classes("food101")["label_names"]:
    (tmp_path / name).mkdir()
    if name in labelled:
      Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(
          tmp_path / name / "0.jpg")
  names = benchmarks.load_classes("food101")["classnames"]
  by_folder = {}
  for label_map in benchmarks.LABEL_MAPS:
    d = benchmarks.load_benchmark(f"paper:food101:{tmp_path}", image_size=8,
                                  label_map=label_map)
    assert d.class_names == names  # the prompts never change, only what they are scored on
    by_folder[label_map] = sorted(names[label] for label in d.labels)
  assert by_folder["dataset"] == sorted(["apple pie", "cheesecake", "cheese plate"])
  assert by_folder["published"] == by_folder["dataset"]  # the two swap places...
  ours = benchmarks.load_classes("food101")["label_names"]
  theirs = benchmarks.load_classes("food101", label_map="published")["label_names"]
  changed = [(ours[i], theirs[i]) for i in range(len(ours)) if ours[i] != theirs[i]]
  assert sorted(changed) == [("cheese_plate", "cheesecake"), ("cheesecake", "cheese_plate")]
  # ...so the prompt "cheesecake" is scored on the cheese_plate folder's image
  theirs_domain = benchmarks.load_benchmark(f"paper:food101:{tmp_path}", image_size=8,
                                            label_map="published")
  ours_domain = benchmarks.load_benchmark(f"paper:food101:{tmp_path}", image_size=8)
  assert (theirs_domain.labels != ours_domain.labels).sum() == 2
  # records of one map never resume into a run of the other: the labels are in the fingerprint
  from metatpt_jax.bench import fingerprint, methods
  cfg = _paper_config("food101,main")
  kind, spec = methods.method_spec(cfg.methods.tpt)
  arch = config.get_arch("tiny")
  prints = {fingerprint.fingerprint(runner.cell_setting(cfg, "tpt", kind, spec, d, 0, "w", arch))
            for d in (theirs_domain, ours_domain)}
  assert len(prints) == 2
  # datasets whose published code agrees with the dataset's labels: one map
  assert benchmarks.load_classes("dtd", label_map="published") == benchmarks.load_classes("dtd")
  with pytest.raises(benchmarks.ClassNamesError, match="label_map"):
    benchmarks.load_classes("food101", label_map="tpt")


def test_a_saved_context_enters_the_fingerprint_by_its_bytes(tmp_path):
  """CoOp's context named by prompt.init: a file retrained under the same name is a new setting
  (its digest is in the setting); words add no digest (their settings are as before); a missing
  file is one line."""
  from metatpt_jax.bench import fingerprint, methods
  from metatpt_jax.data.labelled import Domain
  from metatpt_jax.errors import UserError
  cfg = _paper_config("dtd,tpt")
  kind, spec = methods.method_spec(cfg.methods.tpt)
  arch = config.get_arch("tiny")
  domain = Domain("paper:dtd", np.zeros((2, 4, 4, 3), np.uint8), np.zeros(2, np.int32), ["a"])
  setting = lambda: runner.cell_setting(cfg, "tpt", kind, spec, domain, 0, "w", arch)
  assert "init_sha256" not in setting()["prompt"]  # words: as before
  path = tmp_path / "model.pth.tar-50"
  cfg.prompt.init = str(path)
  with pytest.raises(UserError, match="prompt.init=.* does not exist"):
    setting()
  prints = []
  for i, contents in enumerate((b"first", b"other")):
    path.write_bytes(contents)
    os.utime(path, ns=(10**9 * (i + 1),) * 2)
    prints.append(fingerprint.fingerprint(setting()))
  assert prints[0] != prints[1]

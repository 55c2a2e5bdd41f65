"""The throughput benchmark: its FLOP counts are right, and its tiny run writes every figure."""
import json

import jax
import jax.numpy as jnp
import pytest

from metatpt_jax.bench import throughput
from metatpt_jax.clip import config, model
from tests.config_files import config_module


def _tiny_config():
  return config_module("throughput").get_config("tiny")


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_xla_flop_count_matches_the_closed_form_forward(name):
  # Achieved FLOP/s divides XLA's count by time, so the count must be the model's real work:
  # the closed form counts matmuls only, XLA adds elementwise ops (a few percent at most).
  arch = config.get_arch(name)
  params = model.init_params(jax.random.key(0), arch)
  images = jnp.zeros((4, arch.vision.image_size, arch.vision.image_size, 3))
  compiled = jax.jit(lambda p, x: model.encode_image(p, x, arch)).lower(params, images).compile()
  ratio = throughput.cost_flops(compiled) / (4 * throughput.vit_forward_flops(arch))
  assert 1.0 <= ratio <= 1.08, ratio
  ids = jnp.zeros((3, arch.text.context_length), jnp.int32).at[:, 5].set(config.EOT_TOKEN_ID)
  compiled = jax.jit(lambda p, i: model.encode_text(p, i, arch)).lower(params, ids).compile()
  ratio = throughput.cost_flops(compiled) / throughput.text_forward_flops(arch, 3)
  assert 1.0 <= ratio <= 1.08, ratio


def test_vit_b16_closed_form_is_the_known_size():
  # ViT-B/16 at 224 px is ~17.6 GMACs per image (35 GFLOPs), the commonly quoted figure.
  assert 34e9 < throughput.vit_forward_flops(config.get_arch("ViT-B/16")) < 36e9


def test_tiny_run_reports_every_cell_and_the_targets(tmp_path):
  cfg = _tiny_config()
  cfg.methods = {k: cfg.methods[k] for k in ("tpt", "metatpt_second")}
  cfg.num_classes, cfg.batch_sizes, cfg.repeats = (3,), (1, 2), 1
  cfg.compile_only_archs, cfg.compile_only_methods = ("tiny",), ("metatpt_second",)
  cfg.compile_only_policies = (("float32", False),)
  cfg.output_dir = str(tmp_path)
  text = throughput.run(cfg)
  out = json.loads((tmp_path / "results.json").read_text())
  assert {(r["method"], r["batch"]) for r in out["rows"]} == {
      (m, b) for m in ("tpt", "metatpt_second") for b in (1, 2)}
  for r in out["rows"]:
    assert r["samples_per_s"] > 0 and r["flops"] > 0 and r["memory"]["peak"] > 0, r
  # Second order costs more work per sample than TPT (it encodes views with gradients).
  tpt = next(r for r in out["rows"] if r["method"] == "tpt" and r["batch"] == 1)
  meta = next(r for r in out["rows"] if r["method"] == "metatpt_second" and r["batch"] == 1)
  assert meta["flops_per_sample"] > 1.5 * tpt["flops_per_sample"]
  # Its inner gradient runs over chunks of views, so its FLOPs are counted without the chunks.
  assert meta["flops_counted_on"] == "the same step without chunks" and "flops_counted_on" not in tpt
  assert out["torch"][0]["samples_per_s"] > 0 and out["ceiling"]["flops_per_s"] > 1e9
  goals = {t["goal"].split(" ")[0] + " " + t["goal"].split(" ")[1] for t in out["targets"]}
  assert goals == {"JAX TPT", "tpt compiled", "metatpt_second compiled", "MetaTPT 2nd",
                   "MetaTPT step", "tiny metatpt_second"}, goals
  assert all(isinstance(t["met"], bool) and t["value"] > 0 for t in out["targets"])
  assert out["compile_only"][0]["memory"]["peak"] > 0
  assert "| goal |" in text and (tmp_path / "results.md").exists()


def test_cells_over_the_memory_limit_are_skipped_with_the_reason(tmp_path):
  cfg = _tiny_config()
  cfg.methods = {"tpt": cfg.methods["tpt"]}
  cfg.num_classes, cfg.batch_sizes, cfg.torch_reference = (3,), (1,), False
  cfg.compile_only_archs, cfg.memory_limit_gib = (), 1e-6
  cfg.output_dir = str(tmp_path)
  throughput.run(cfg)
  (row,) = json.loads((tmp_path / "results.json").read_text())["rows"]
  assert "memory_limit_gib" in row["skipped"] and "samples_per_s" not in row


def test_cost_table_interpolates_between_measured_class_counts():
  from metatpt_jax.bench import cost_table
  rows = [dict(method="tpt", batch=1, num_classes=10, flops_per_sample=2e12, s_per_sample=20.0),
          dict(method="tpt", batch=1, num_classes=1000, flops_per_sample=12e12,
               s_per_sample=60.0),
          dict(method="metatpt_second", batch=1, num_classes=10, flops_per_sample=10e12),
          dict(method="metatpt_second", batch=2, num_classes=10, flops_per_sample=1.0)]
  text = cost_table.table(dict(rows=rows), tflops=100.0)
  # ImageNet-R: 200 classes, 30,000 images; TPT 2 + 10 * 190 / 990 = 3.92 TFLOP per image.
  line = next(row for row in text.splitlines() if row.startswith("| imagenet_r |"))
  cells = [c.strip() for c in line.strip("|").split("|")]
  assert cells[3:5] == ["3.9", "10.0"], cells
  assert float(cells[5]) == pytest.approx(30000 * 3.919e12 / 100e12 / 3600, abs=0.01)
  with pytest.raises(SystemExit, match="no batch-1 'metatpt_second'"):
    cost_table.table(dict(rows=rows[:2]), tflops=100.0)


def test_every_throughput_variant_builds_and_the_accelerator_one_is_real_scale():
  from tests.config_files import config_module
  module = config_module("throughput")
  for variant in module.VARIANTS:
    module.get_config(variant)
  c = module.get_config("accelerator")
  assert (c.arch, c.n_views, tuple(c.num_classes)) == ("ViT-B/16", 64, (200, 1000))
  assert set(c.methods) == {"tpt", "metatpt_second"} and c.methods.metatpt_second.order == "second"
  assert not c.torch_reference  # the pinned torch is a CPU build: no loop on the same card

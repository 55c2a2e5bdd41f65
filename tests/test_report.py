"""Accuracy/ECE aggregation, the tables' captions and the partial-results filter."""
from __future__ import annotations

import json

import numpy as np
import pytest

from metatpt_jax.bench import records, report, summarize
from metatpt_jax.errors import UserError


def _rec(method, seed, index, correct, confidence, domain="d"):
  return dict(method=method, domain=domain, seed=seed, index=index, correct=correct,
              confidence=confidence, label=0, prediction=0 if correct else 1)


def test_ece_known_values():
  # all at confidence 0.9, 90% right: perfectly calibrated
  assert report.expected_calibration_error([0.9] * 10, [1] * 9 + [0]) < 1e-9
  # confidence 1.0 but half right: ECE 0.5
  np.testing.assert_allclose(report.expected_calibration_error([1.0] * 4, [1, 0, 1, 0]), 0.5)


def _ctpt_ece(num_bins, confidences, correct):
  """A transcription of C-TPT's `ECE_Loss` (hee-suk-yoon/C-TPT, tpt_classification.py): bins
  from torch.linspace, a sample in bin (lower, upper], bin error weighted by its share."""
  import torch
  bounds = torch.linspace(0, 1, num_bins + 1)
  acc, conf, num = [0] * num_bins, [0] * num_bins, [0] * num_bins
  for c, ok in zip(confidences, correct):
    for b, (lower, upper) in enumerate(zip(bounds[:-1], bounds[1:])):
      if lower.item() < c <= upper.item():
        num[b] += 1
        acc[b] += ok
        conf[b] += c
  loss = 0.0
  for b in range(num_bins):
    if num[b]:
      loss += abs(acc[b] / num[b] - conf[b] / num[b]) * num[b] / len(confidences)
  return loss


def test_ece_is_ctpts_definition():
  """20 bins closed on the right, as C-TPT computes the only published ECE we compare with;
  confidences on the bin edges (float32, as records store them) land where theirs do."""
  rng = np.random.default_rng(0)
  edges = [float(np.float32(k / 20)) for k in (1, 2, 7, 10, 19, 20)]
  confidence = np.concatenate([rng.uniform(0.02, 1, 300), np.repeat(edges, 5)])
  correct = rng.uniform(size=confidence.size) < confidence ** 2
  ours = report.expected_calibration_error(confidence, correct)
  np.testing.assert_allclose(ours, _ctpt_ece(20, confidence.tolist(), correct.tolist()),
                             rtol=1e-12, atol=1e-12)
  # a confidence on an edge: 0.5 closes C-TPT's bin (0.45, 0.5], apart from 0.52; the earlier
  # definition (15 bins closed on the left) puts both in [7/15, 8/15)
  np.testing.assert_allclose(report.expected_calibration_error([0.5, 0.52], [1, 0]),
                             0.5 * abs(0.5 - 1) + 0.5 * abs(0.52 - 0))
  np.testing.assert_allclose(report.expected_calibration_error([0.5, 0.52], [1, 0], 15,
                                                               right_closed=False), 0.01)


def test_paired_mean_weighs_every_domain_the_same():
  """World v3's domains hold 34-329 images: the mean difference is the mean of the domains'
  differences (as the accuracy table's mean), not the mean over pooled pairs."""
  recs = []
  for domain, n, wins in (("big", 300, 30), ("small", 30, 15)):
    for i in range(n):
      recs.append(_rec("zero_shot", 0, i, False, 0.5, domain))
      recs.append(_rec("tpt", 0, i, i < wins, 0.5, domain))
  diffs = report.paired_differences(recs, ["zero_shot", "tpt"], ["big", "small"])["tpt"]
  np.testing.assert_allclose(diffs["big"][0], 10.0)
  np.testing.assert_allclose(diffs["small"][0], 50.0)
  mean, half, n = diffs["mean"]
  np.testing.assert_allclose(mean, 30.0)  # pooled pairs would say 45 / 330 = 13.6
  want = 1.959964 * np.sqrt(diffs["big"][1] ** 2 + diffs["small"][1] ** 2) / 1.959964 / 2
  np.testing.assert_allclose(half, want, rtol=1e-6)
  assert n == 330


def test_summary_mean_and_std_over_seeds():
  recs = [_rec("m", 0, i, i < 3, 0.8) for i in range(4)] + \
         [_rec("m", 1, i, i < 1, 0.8) for i in range(4)]
  table = report.summary(report.aggregate(recs), ["m"], ["d"])
  mean, std = table["m"]["d/acc"]
  np.testing.assert_allclose(mean, 50.0)
  np.testing.assert_allclose(std, np.std([75.0, 25.0], ddof=1))
  text = report.markdown_table(table, ["m"], ["d"], "acc")
  assert "| m | 50.0 ± 35.4 |" in text
  caption = text.splitlines()[0]  # the line above the table says what ± is
  assert "± sample standard deviation over seeds (2 seeds per cell)" in caption


def test_incomplete_cells_are_left_out():
  recs = [_rec("m", 0, i, True, 0.9) for i in range(4)] + [_rec("m", 1, 0, False, 0.9)]
  kept = summarize.complete_records(recs, num_images=4)
  assert {r["seed"] for r in kept} == {0}


def test_an_image_recorded_twice_counts_once():
  # records merged from two copies of one run: the cell stays complete, each image once
  recs = [_rec("m", 0, i, True, 0.9) for i in range(4)]
  again = dict(_rec("m", 0, 1, False, 0.8))
  kept = summarize.complete_records(recs + [again], num_images=4)
  assert sorted(r["index"] for r in kept) == [0, 1, 2, 3]
  assert all(r["correct"] for r in kept)  # the first record of an image is the one kept


def test_one_seed_shows_no_spread():
  recs = [_rec("m", 0, i, i < 3, 0.8) for i in range(4)]
  table = report.summary(report.aggregate(recs), ["m"], ["d"])
  assert table["m"]["d/acc"] == (75.0, None)
  text = report.markdown_table(table, ["m"], ["d"], "acc")
  assert "| m | 75.0 | 75.0 |" in text
  assert "±" not in text and "one seed" in text.splitlines()[0]


def test_paired_differences_and_interval():
  # method right where zero-shot is wrong on 2 of 4 samples, wrong where it is right on 1
  zs = [True, False, False, True]
  m = [True, True, True, False]
  recs = [_rec("zero_shot", 0, i, c, 0.5) for i, c in enumerate(zs)] + \
         [_rec("m", 0, i, c, 0.5) for i, c in enumerate(m)]
  diffs = report.paired_differences(recs, ["zero_shot", "m"], ["d"])
  d = np.array([0, 100, 100, -100], float)
  mean, half, n = diffs["m"]["d"]
  np.testing.assert_allclose(mean, 25.0)
  np.testing.assert_allclose(half, 1.959964 * d.std(ddof=1) / 2)
  assert n == 4 and diffs["m"]["mean"] == diffs["m"]["d"]
  assert "zero_shot" not in diffs
  caption, header, _, row = report.paired_table(diffs, ["d"]).splitlines()
  assert "± half-width of the 95 % normal interval" in caption and "4 images per domain" in caption
  assert header.startswith("| method minus zero_shot")
  assert row == f"| m | +25.0 ± {half:.1f} | +25.0 ± {half:.1f} |"  # cells parse as before


def test_seeds_that_rerun_the_same_images_are_not_independent_samples():
  """World v3's plain domains hold the same images under every seed (only the views change):
  a difference repeated by a second seed must not narrow the interval."""
  zs = [True, False, False, True, False]
  m = [True, True, True, False, False]
  one = [_rec("zero_shot", 0, i, c, 0.5) for i, c in enumerate(zs)] + \
        [_rec("m", 0, i, c, 0.5) for i, c in enumerate(m)]
  two = one + [dict(r, seed=1) for r in one]
  a = report.paired_differences(one, ["zero_shot", "m"], ["d"])["m"]["d"]
  b = report.paired_differences(two, ["zero_shot", "m"], ["d"])["m"]["d"]
  np.testing.assert_allclose(b, a)  # same mean, same half-width, 5 images either way
  # a second seed that disagrees on one image: that image counts its mean difference
  flipped = [dict(r, seed=1, correct=not r["correct"]) if r["method"] == "m" and r["index"] == 4
             else dict(r, seed=1) for r in one]
  c = report.paired_differences(one + flipped, ["zero_shot", "m"], ["d"])["m"]["d"]
  np.testing.assert_allclose(c[0], np.mean([0, 100, 100, -100, 50]))
  assert c[2] == 5


def test_domain_labels_tell_sources_apart():
  labels = {report.domain_label(n) for n in ("fashion_mnist:affine:3", "animal_mnist:affine:3")}
  assert len(labels) == 2
  assert report.domain_label("folder:/data/pets:clean") == "pets clean"


def test_settings_are_labelled_across_domains_and_seeds_not_per_cell():
  """Each cell has its own fingerprint; one setting spans many cells. Two lrs of one method name
  are two rows, whatever the number of domains and seeds."""
  def setting(lr, domain, seed):
    return dict(method=dict(kind="tpt", spec=dict(lr=lr)), seed=seed,
                data=dict(domain=domain, class_names=[domain], num_images=4))
  settings, recs = {}, []
  for lr in (0.005, 0.05):
    for domain in ("a", "b"):
      for seed in (0, 1):
        fp = f"{lr}-{domain}-{seed}"
        settings[fp] = setting(lr, domain, seed)
        recs += [dict(_rec("tpt", seed, i, True, 0.9, domain), fingerprint=fp) for i in range(4)]
  names = {r["method"] for r in summarize.label_settings(recs, settings)}
  assert len(names) == 2 and all(n.startswith("tpt@") for n in names)
  one = [r for r in recs if r["fingerprint"].startswith("0.005")]
  assert {r["method"] for r in summarize.label_settings(one, settings)} == {"tpt"}
  # without settings.json every fingerprint stays apart (never mixed)
  assert len({r["method"] for r in summarize.label_settings(recs)}) == 8


def test_one_setting_over_domains_of_different_sizes_is_one_row():
  """A run over every image of domains of different sizes records each cell's own count; the
  rows are still one per setting, while a sweep over image counts on one domain stays apart."""
  def setting(domain, n, lr=0.005):
    return dict(method=dict(kind="tpt", spec=dict(lr=lr)), seed=0,
                data=dict(domain=domain, class_names=[domain], num_images=n))
  settings = {"a84": setting("a", 84), "b329": setting("b", 329), "c329": setting("a", 329, 0.05)}
  recs = [dict(_rec("tpt", 0, 0, True, 0.9, setting["data"]["domain"]), fingerprint=fp)
          for fp, setting in settings.items()]
  ids = summarize.method_setting_ids(settings)
  assert ids["a84"] == ids["b329"] != ids["c329"]
  assert len({r["method"] for r in summarize.label_settings(recs, settings)}) == 2
  # the same setting on domain "a" at two image counts: two ids, never one row
  sweep = {"a84": setting("a", 84), "a329": setting("a", 329), "b329": setting("b", 329)}
  ids = summarize.method_setting_ids(sweep)
  assert ids["a84"] != ids["a329"]


def _write_output_dir(path, num_images, sizes):
  """A tiny output_dir: records of two methods x two domains (one seed) and their settings;
  `sizes[(method, domain)]` records per cell, `num_images` each setting's image count."""
  settings, recs = {}, []
  for method in ("zero_shot", "tpt"):
    for domain in ("a", "b"):
      fp = f"{method}-{domain}"
      settings[fp] = dict(method=dict(kind=method), seed=0,
                          data=dict(domain=domain, class_names=[domain], num_images=num_images))
      recs += [dict(_rec(method, 0, i, i % 2 == 0, 0.7, domain), fingerprint=fp)
               for i in range(sizes.get((method, domain), num_images))]
  (path / records.SETTINGS_FILE).write_text(json.dumps(settings))
  (path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_summarize_takes_each_cells_image_count_from_the_settings(tmp_path, capsys):
  # 1,000 images per cell as in the v2 benchmark (more than the old --num-images default, 500);
  # one cell stopped part way.
  _write_output_dir(tmp_path, 1000, {("tpt", "b"): 600})
  summarize.main([str(tmp_path)])
  out = capsys.readouterr().out
  assert out.startswith("complete cells only: 3 of 4;") and "images per cell 1000" in out
  assert "| zero_shot | 50.0 | 50.0 | 50.0 |" in out
  assert "| tpt | 50.0 |  |  |" in out  # domain b is partial: no cell, so no mean either
  summarize.main([str(tmp_path), "--num-images", "600"])  # the override still counts
  assert "complete cells only: 1 of 4;" in capsys.readouterr().out


def test_summarize_without_an_image_count_says_so_in_one_line(tmp_path, capsys):
  _write_output_dir(tmp_path, 4, {})
  (tmp_path / records.SETTINGS_FILE).unlink()
  with pytest.raises(SystemExit) as info:
    summarize.main([str(tmp_path)])
  err = capsys.readouterr().err.strip()
  assert info.value.code == 2 and len(err.splitlines()) == 1
  assert "no settings.json" in err and "--num-images" in err
  with pytest.raises(UserError, match="no image count in settings.json.*--num-images"):
    summarize.complete_records([dict(_rec("m", 0, 0, True, 0.9), fingerprint="x")], None, {})


def test_a_read_only_store_leaves_a_line_being_written_alone(tmp_path):
  """summarize reads beside a running benchmark: it must not cut the line the benchmark is
  writing (the writer's own store repairs a cut line when it reopens after a kill)."""
  path = tmp_path / records.file_name()
  whole = json.dumps(dict(fingerprint="f", method="tpt", domain="d", seed=0, index=0)) + "\n"
  path.write_text(whole + '{"fingerprint": "f", "meth')
  assert len(records.RecordStore(str(tmp_path), read_only=True).all()) == 1
  assert path.read_text().endswith('"meth')
  assert len(records.RecordStore(str(tmp_path)).all()) == 1  # the writer repairs it
  assert path.read_text() == whole

"""Accuracy/ECE aggregation and the partial-results filter."""
import numpy as np

from metatpt_jax.bench import report, summarize


def _rec(method, seed, index, correct, confidence, domain="d"):
  return dict(method=method, domain=domain, seed=seed, index=index, correct=correct,
              confidence=confidence, label=0, prediction=0 if correct else 1)


def test_ece_known_values():
  # all at confidence 0.9, 90% right: perfectly calibrated
  assert report.expected_calibration_error([0.9] * 10, [1] * 9 + [0]) < 1e-9
  # confidence 1.0 but half right: ECE 0.5
  np.testing.assert_allclose(report.expected_calibration_error([1.0] * 4, [1, 0, 1, 0]), 0.5)


def test_summary_mean_and_std_over_seeds():
  recs = [_rec("m", 0, i, i < 3, 0.8) for i in range(4)] + \
         [_rec("m", 1, i, i < 1, 0.8) for i in range(4)]
  table = report.summary(report.aggregate(recs), ["m"], ["d"])
  mean, std = table["m"]["d/acc"]
  np.testing.assert_allclose(mean, 50.0)
  np.testing.assert_allclose(std, np.std([75.0, 25.0], ddof=1))
  assert "| m | 50.0 ± 35.4 |" in report.markdown_table(table, ["m"], ["d"], "acc")


def test_incomplete_cells_are_left_out():
  recs = [_rec("m", 0, i, True, 0.9) for i in range(4)] + [_rec("m", 1, 0, False, 0.9)]
  kept = summarize.complete_records(recs, num_images=4)
  assert {r["seed"] for r in kept} == {0}


def test_one_seed_shows_no_spread():
  recs = [_rec("m", 0, i, i < 3, 0.8) for i in range(4)]
  table = report.summary(report.aggregate(recs), ["m"], ["d"])
  assert table["m"]["d/acc"] == (75.0, None)
  assert "| m | 75.0 | 75.0 |" in report.markdown_table(table, ["m"], ["d"], "acc")


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

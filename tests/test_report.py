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

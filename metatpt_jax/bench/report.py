"""Aggregates per-sample records into accuracy/ECE tables, a results JSON and plots."""
from __future__ import annotations

import collections
import json
import os

import numpy as np

ECE_BINS = 15  # the customary number of equal-width confidence bins


def expected_calibration_error(confidence, correct, bins: int = ECE_BINS) -> float:
  """Sum over confidence bins of |accuracy - mean confidence| weighted by bin size."""
  confidence, correct = np.asarray(confidence, float), np.asarray(correct, float)
  edges = np.linspace(0, 1, bins + 1)
  which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
  ece = 0.0
  for b in range(bins):
    sel = which == b
    if sel.any():
      ece += sel.mean() * abs(correct[sel].mean() - confidence[sel].mean())
  return float(ece)


def aggregate(records: list[dict]) -> dict:
  """{method: {domain: {seed: {"acc", "ece", "n"}}}} in percent."""
  groups = collections.defaultdict(list)
  for r in records:
    groups[(r["method"], r["domain"], r["seed"])].append(r)
  out: dict = collections.defaultdict(lambda: collections.defaultdict(dict))
  for (method, domain, seed), recs in groups.items():
    correct = [r["correct"] for r in recs]
    out[method][domain][seed] = dict(
        acc=100 * float(np.mean(correct)),
        ece=100 * expected_calibration_error([r["confidence"] for r in recs], correct),
        n=len(recs))
  return json.loads(json.dumps(out))  # plain dicts, str keys


def _mean_std(values):
  values = np.asarray(values, float)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def summary(agg: dict, methods: list[str], domains: list[str]) -> dict:
  """Per (method, domain): mean and std over seeds; per method: mean over domains per seed."""
  table = {}
  for method in methods:
    row = {}
    per_seed_means = collections.defaultdict(list)
    for domain in domains:
      seeds = agg.get(method, {}).get(domain, {})
      if not seeds:
        continue
      for metric in ("acc", "ece"):
        row[f"{domain}/{metric}"] = _mean_std([s[metric] for s in seeds.values()])
      for seed, s in seeds.items():
        per_seed_means[seed].append(s["acc"])
    complete = [np.mean(v) for v in per_seed_means.values() if len(v) == len(domains)]
    if complete:
      row["mean/acc"] = _mean_std(complete)
    table[method] = row
  return table


def markdown_table(table: dict, methods: list[str], domains: list[str], metric: str) -> str:
  cols = domains + (["mean"] if metric == "acc" else [])
  lines = [f"| method ({metric} %) | " + " | ".join(cols) + " |",
           "|---" * (len(cols) + 1) + "|"]
  for method in methods:
    cells = []
    for col in cols:
      cell = table.get(method, {}).get(f"{col}/{metric}")
      cells.append("" if cell is None else f"{cell[0]:.1f} ± {cell[1]:.1f}")
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_outputs(output_dir: str, records: list[dict], methods, domains, config_json: str):
  """results.json, results.md and accuracy.png; returns the Markdown text."""
  agg = aggregate(records)
  table = summary(agg, methods, domains)
  text = (markdown_table(table, methods, domains, "acc") + "\n\n"
          + markdown_table(table, methods, domains, "ece") + "\n")
  with open(os.path.join(output_dir, "results.json"), "w") as f:
    json.dump(dict(per_seed=agg, summary=table, config=json.loads(config_json)), f, indent=1)
  with open(os.path.join(output_dir, "results.md"), "w") as f:
    f.write(text)
  plot_accuracy(os.path.join(output_dir, "accuracy.png"), table, methods, domains)
  return text


def plot_accuracy(path, table, methods, domains):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  cols = domains + ["mean"]
  fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(cols) * max(1, len(methods)) / 3), 4))
  width = 0.8 / max(1, len(methods))
  for i, method in enumerate(methods):
    vals = [table.get(method, {}).get(f"{c}/acc", (np.nan, 0)) for c in cols]
    ax.bar(np.arange(len(cols)) + i * width, [v[0] for v in vals], width,
           yerr=[v[1] for v in vals], label=method)
  ax.set_xticks(np.arange(len(cols)) + 0.4 - width / 2)
  ax.set_xticklabels([c.split(":", 1)[-1] for c in cols], rotation=30, ha="right", fontsize=8)
  ax.set_ylabel("top-1 accuracy (%)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_views(path, before, after, titles):
  """Grid: per sample, a row of views before and a row after MetaTPT's inner loop.

  before, after: [N, K, S, S, 3] float in [0, 1].
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  n, k = before.shape[:2]
  fig, axes = plt.subplots(2 * n, k, figsize=(k * 0.9, 2 * n * 0.95), squeeze=False)
  for i in range(n):
    for j in range(k):
      for row, imgs, tag in ((2 * i, before, "before"), (2 * i + 1, after, "after")):
        ax = axes[row, j]
        ax.imshow(np.clip(imgs[i, j], 0, 1))
        ax.set_xticks([])
        ax.set_yticks([])
        if j == 0:
          ax.set_ylabel(f"{titles[i]}\n{tag}", fontsize=6)
  fig.tight_layout(pad=0.1)
  fig.savefig(path, dpi=120)
  plt.close(fig)

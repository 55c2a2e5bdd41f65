"""Aggregates per-sample records into accuracy/ECE tables, a results JSON and plots."""
from __future__ import annotations

import collections
import json
import os
import textwrap

import numpy as np

from metatpt_jax.bench import storage

# C-TPT's definition (the only published ECE of these methods we compare with; their
# tpt_classification.py `ECE_Loss(20, ...)`): 20 equal-width bins closed on the right,
# (k/20, (k+1)/20], edges in float32 as their torch.linspace makes them. `ece15` in results.json
# keeps this project's earlier definition (15 bins closed on the left) for older figures.
ECE_BINS = 20


def expected_calibration_error(confidence, correct, bins: int = ECE_BINS,
                               right_closed: bool = True) -> float:
  """Sum over equal-width confidence bins of |accuracy - mean confidence| weighted by the
  bin's share of all samples. right_closed: bins (lo, hi] as C-TPT's (a confidence of exactly 0
  falls in none, as theirs); otherwise [lo, hi) with 1.0 in the last bin."""
  confidence, correct = np.asarray(confidence, float), np.asarray(correct, float)
  if right_closed:
    edges = np.linspace(0, 1, bins + 1, dtype=np.float32).astype(float)
    which = np.searchsorted(edges, confidence, side="left") - 1  # -1: at or below 0
  else:
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
  ece = 0.0
  for b in range(bins):
    sel = which == b
    if sel.any():
      ece += sel.mean() * abs(correct[sel].mean() - confidence[sel].mean())
  return float(ece)


def aggregate(records: list[dict]) -> dict:
  """{method: {domain: {seed: {"acc", "ece", "ece15", "n"}}}} in percent."""
  groups = collections.defaultdict(list)
  for r in records:
    groups[(r["method"], r["domain"], r["seed"])].append(r)
  out: dict = collections.defaultdict(lambda: collections.defaultdict(dict))
  for (method, domain, seed), recs in groups.items():
    correct = [r["correct"] for r in recs]
    out[method][domain][seed] = dict(
        acc=100 * float(np.mean(correct)),
        ece=100 * expected_calibration_error([r["confidence"] for r in recs], correct),
        ece15=100 * expected_calibration_error([r["confidence"] for r in recs], correct, 15,
                                               right_closed=False),
        n=len(recs))
  return json.loads(json.dumps(out))  # plain dicts, str keys


def _mean_std(values):
  """(mean, std over seeds); std is None for a single seed (there is no spread to show)."""
  values = np.asarray(values, float)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else None


def summary(agg: dict, methods: list[str], domains: list[str]) -> dict:
  """Per (method, domain): mean and std over seeds; per method: mean over domains per seed.

  `<column>/seeds` holds how many seeds each cell's spread is over, for the table's caption.
  """
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
      row[f"{domain}/seeds"] = len(seeds)
      for seed, s in seeds.items():
        per_seed_means[seed].append(s["acc"])
    complete = [np.mean(v) for v in per_seed_means.values() if len(v) == len(domains)]
    if complete:
      row["mean/acc"] = _mean_std(complete)
      row["mean/seeds"] = len(complete)
    table[method] = row
  return table


METRIC_NAMES = {"acc": "top-1 accuracy (%)",
                "ece": f"expected calibration error (%, C-TPT's {ECE_BINS} right-closed confidence bins)"}


def _count_text(counts: set[int]) -> str:
  return str(min(counts)) if len(counts) == 1 else f"{min(counts)}-{max(counts)}"


def spread_caption(metric: str, seed_counts: set[int]) -> str:
  """The line above a mean-over-seeds table that says what its ± is (one seed: no ± shown).

  `seed_counts`: the numbers of seeds behind the table's cells; 0 stands for "several, number
  unknown" (a table without `<column>/seeds`)."""
  name = METRIC_NAMES[metric]
  if not seed_counts:
    return f"{name}: no cells."
  if max(seed_counts) == 1:
    return f"{name}, one seed per cell, so no spread over seeds is shown."
  known = seed_counts - {0}
  count = f" ({_count_text(known)} seeds per cell)" if known and 0 not in seed_counts else ""
  text = f"{name}: mean over seeds ± sample standard deviation over seeds{count}"
  text += "; a cell of one seed shows its value alone." if 1 in seed_counts else "."
  if metric == "acc":
    text += " Column mean: per seed the mean over domains, then mean ± sd over seeds."
  return text


def markdown_table(table: dict, methods: list[str], domains: list[str], metric: str) -> str:
  """A caption line saying what ± is, then the table (cells "mean" or "mean ± sd")."""
  cols = domains + (["mean"] if metric == "acc" else [])
  lines = [f"| method ({metric} %) | " + " | ".join(cols) + " |",
           "|---" * (len(cols) + 1) + "|"]
  seed_counts = set()
  for method in methods:
    cells = []
    for col in cols:
      cell = table.get(method, {}).get(f"{col}/{metric}")
      if cell is None:
        cells.append("")
        continue
      cells.append(f"{cell[0]:.1f}" if cell[1] is None else f"{cell[0]:.1f} ± {cell[1]:.1f}")
      seed_counts.add(table[method].get(f"{col}/seeds", 1 if cell[1] is None else 0))
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  return "\n".join([spread_caption(metric, seed_counts)] + lines)


Z95 = 1.959964  # two-sided 95 % normal quantile


def paired_differences(records: list[dict], methods, domains, baseline: str = "zero_shot"):
  """{method: {domain | "mean": (mean, 95 % half-width, images)}} of method minus baseline, in
  accuracy points, from per-sample pairs (same domain, seed and index).

  Pairs are clustered by image: an image's difference is averaged over the seeds that hold it,
  and the interval is the normal one of the mean over images, 1.96 * sd / sqrt(images). Seeds
  that re-run the same images (world v3's plain domains: only the views change) are therefore
  not counted as independent samples. "mean" is the mean over domains of the per-domain
  differences (each domain weighs the same, as in the accuracy table's mean, whatever its size),
  with the interval of that mean: 1.96 * sqrt(sum_d sd_d^2 / n_d) / D.
  """
  correct = {(r["method"], r["domain"], r["seed"], r["index"]): float(r["correct"])
             for r in records}
  out = {}
  for method in methods:
    if method == baseline:
      continue
    row, per_domain = {}, []
    for domain in domains:
      by_image = collections.defaultdict(list)
      for k, c in correct.items():
        if k[0] == method and k[1] == domain and (baseline,) + k[1:] in correct:
          by_image[k[3]].append(100 * (c - correct[(baseline,) + k[1:]]))
      if by_image:
        d = np.array([np.mean(v) for v in by_image.values()])
        row[domain] = _mean_ci(d)
        per_domain.append(d)
    if per_domain:
      row["mean"] = _mean_of_domains(per_domain)
    out[method] = row
  return out


def _mean_of_domains(per_domain):
  """(mean over domains of the mean differences, 95 % half-width, pairs) of [d_1, ..., d_D]."""
  means = [d.mean() for d in per_domain]
  variances = [d.var(ddof=1) / len(d) if len(d) > 1 else float("nan") for d in per_domain]
  half = Z95 * np.sqrt(np.sum(variances)) / len(per_domain)
  return float(np.mean(means)), float(half), int(sum(len(d) for d in per_domain))


def _mean_ci(d):
  d = np.asarray(d, float)
  half = Z95 * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
  return float(d.mean()), float(half), int(len(d))


def paired_caption(diffs: dict, domains, baseline: str = "zero_shot") -> str:
  """The line above a paired table that says what its ± is and over how many images."""
  per_domain = {row[c][2] for row in diffs.values() for c in domains if c in row}
  pooled = {row["mean"][2] for row in diffs.values() if "mean" in row}
  counts = (f" ({_count_text(per_domain)} images per domain, {_count_text(pooled)} in mean)"
            if per_domain and pooled else "")
  return (f"method minus {baseline}, in accuracy points: mean paired difference ± half-width of "
          f"the 95 % normal interval over the images{counts}; an image's difference is "
          "averaged over the seeds that hold it; the mean column weighs every domain the same.")


def paired_table(diffs: dict, domains, baseline: str = "zero_shot") -> str:
  """A caption line saying what ± is, then the table (cells "+d.d ± h.h")."""
  cols = domains + ["mean"]
  lines = [f"| method minus {baseline} (points, 95 % CI) | " + " | ".join(cols) + " |",
           "|---" * (len(cols) + 1) + "|"]
  for method, row in diffs.items():
    cells = [f"{row[c][0]:+.1f} ± {row[c][1]:.1f}" if c in row else "" for c in cols]
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  return "\n".join([paired_caption(diffs, domains, baseline)] + lines)


def write_outputs(output_dir: str, records: list[dict], methods, domains, config_json: str,
                  platform: dict | None = None):
  """results.json, results.md, accuracy.png and gain_vs_zero_shot.png; returns the Markdown.
  platform: where the table was written (backend, device kind, matmul precision)."""
  agg = aggregate(records)
  table = summary(agg, methods, domains)
  text = (markdown_table(table, methods, domains, "acc") + "\n\n"
          + markdown_table(table, methods, domains, "ece") + "\n")
  diffs = paired_differences(records, methods, domains) if "zero_shot" in methods else {}
  if diffs:
    text += "\n" + paired_table(diffs, domains) + "\n"
  results = dict(per_seed=agg, summary=table, minus_zero_shot=diffs,
                 config=json.loads(config_json), platform=platform)
  storage.write_bytes(storage.join(output_dir, "results.json"),
                      json.dumps(results, indent=1).encode())
  storage.write_bytes(storage.join(output_dir, "results.md"), text.encode())
  plot_accuracy(storage.join(output_dir, "accuracy.png"), table, methods, domains)
  if diffs:
    plot_gains(storage.join(output_dir, "gain_vs_zero_shot.png"), diffs, domains)
  return text


def domain_label(name: str) -> str:
  """A short plot label that still tells sources apart: 'fashion_mnist:affine:3' ->
  'fashion_mnist affine:3'; 'folder:/data/pets:clean' -> 'pets clean'."""
  if name.startswith("folder:"):
    path, _, shift = name[len("folder:"):].rpartition(":")
    return f"{os.path.basename(path.rstrip('/')) or path} {shift}"
  source, _, shift = name.partition(":")
  return f"{source} {shift}".strip()


def plot_gains(path, diffs: dict, domains):
  """Each method minus zero-shot per domain (and pooled), with 95 % paired intervals."""
  bars = {m: [row.get(c, (np.nan, 0.0))[:2] for c in domains + ["mean"]]
          for m, row in diffs.items()}
  _bar_plot(path, bars, domains + ["mean"], "accuracy minus zero-shot (points, 95 % CI)",
            zero_line=True)


def plot_accuracy(path, table, methods, domains):
  """Accuracy per domain and mean, error bars the std over seeds (none for one seed)."""
  cols = domains + ["mean"]
  bars = {m: [table.get(m, {}).get(f"{c}/acc", (np.nan, 0.0)) for c in cols] for m in methods}
  _bar_plot(path, bars, cols, "top-1 accuracy (%)")


def _bar_plot(path, bars: dict, cols, ylabel: str, zero_line: bool = False):
  """Grouped bars: bars[method] = [(value, error or None) per column]."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(cols) * max(1, len(bars)) / 3), 4))
  width = 0.8 / max(1, len(bars))
  for i, (method, vals) in enumerate(bars.items()):
    ax.bar(np.arange(len(cols)) + i * width, [v[0] for v in vals], width,
           yerr=[v[1] or 0.0 for v in vals], capsize=2, label=method)
  if zero_line:
    ax.axhline(0, color="black", linewidth=0.8)
  ax.set_xticks(np.arange(len(cols)) + 0.4 - width / 2)
  ax.set_xticklabels([domain_label(c) for c in cols], rotation=30, ha="right", fontsize=8)
  ax.set_ylabel(ylabel)
  ax.legend(fontsize=7)
  fig.tight_layout()
  storage.save_figure(fig, path, dpi=120)
  plt.close(fig)


def plot_views(path, before, after, titles):
  """Grid: per sample, a row of views before and a row after MetaTPT's inner loop.

  before, after: [N, K, S, S, 3] float in [0, 1].
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
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
          name = "\n".join(textwrap.wrap(titles[i], 14)[:2])  # long class names stay in the row
          ax.set_ylabel(f"{name}\n{tag}", fontsize=6)
  fig.tight_layout(pad=0.1)
  storage.save_figure(fig, path, dpi=120)
  plt.close(fig)

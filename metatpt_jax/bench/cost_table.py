"""Cost per paper dataset from a throughput run: `python -m metatpt_jax.bench.cost_table RESULTS`.

RESULTS is a `metatpt-throughput` results.json (B/16, 64 views). For every dataset of
`data/benchmarks.py` it prints FLOPs per image of TPT and of MetaTPT second order, hours for the
whole test set at an assumed accelerator rate (`--tflops`, an assumption, not a measurement),
and days for TPT at the measured seconds per image of the run's machine. FLOPs and seconds are
interpolated linearly in the class count between the measured class counts (the text tower's
share grows with the classes; below the first and above the last measured count the nearest
segment is extended).
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from metatpt_jax.data import benchmarks


def _points(rows, method, field):
  """(classes, values) of `method`'s batch-1 rows that measured `field`, sorted by classes."""
  pts = sorted((r["num_classes"], r[field]) for r in rows
               if r["method"] == method and r["batch"] == 1 and field in r)
  if not pts:
    raise SystemExit(f"The results have no batch-1 {method!r} row with {field!r}; run "
                     "metatpt-throughput with that method at batch 1 first.")
  return np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float)


def _linear(points, x):
  xs, ys = points
  if len(xs) == 1:
    return float(ys[0])
  i = int(np.clip(np.searchsorted(xs, x) - 1, 0, len(xs) - 2))
  return float(ys[i] + (ys[i + 1] - ys[i]) * (x - xs[i]) / (xs[i + 1] - xs[i]))


def table(results: dict, tflops: float, tpt: str = "tpt", meta: str = "metatpt_second") -> str:
  rows = results["rows"]
  tpt_flops, meta_flops = _points(rows, tpt, "flops_per_sample"), _points(
      rows, meta, "flops_per_sample")
  tpt_seconds = _points(rows, tpt, "s_per_sample")
  lines = [f"| dataset | classes | images | TPT TFLOP/img | MetaTPT TFLOP/img | TPT h @{tflops:g} "
           f"TFLOP/s | MetaTPT h @{tflops:g} TFLOP/s | TPT on the run's machine, days |",
           "|---|---|---|---|---|---|---|---|"]
  for b in benchmarks.BENCHMARKS.values():
    f_tpt, f_meta = _linear(tpt_flops, b.num_classes), _linear(meta_flops, b.num_classes)
    hours = lambda f, n=b.paper_size: n * f / (tflops * 1e12) / 3600
    days = b.paper_size * _linear(tpt_seconds, b.num_classes) / 86400
    lines.append(f"| {b.name} | {b.num_classes} | {b.paper_size} | {f_tpt / 1e12:.1f} | "
                 f"{f_meta / 1e12:.1f} | {hours(f_tpt):.2f} | {hours(f_meta):.2f} | {days:.0f} |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("results", help="results.json of a metatpt-throughput run")
  parser.add_argument("--tflops", type=float, default=100.0,
                      help="assumed sustained accelerator rate, TFLOP/s (default 100)")
  args = parser.parse_args(argv)
  with open(args.results) as f:
    print(table(json.load(f), args.tflops))


if __name__ == "__main__":
  main()

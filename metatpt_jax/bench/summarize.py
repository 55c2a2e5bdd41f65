"""Tables from a benchmark's samples.jsonl, also while it runs or after it was interrupted.

    python -m metatpt_jax.bench.summarize runs/bench_small [--num-images 500]

Only complete (method, domain, seed) cells count -- those with --num-images records -- so a
partly processed cell never enters a mean.
"""
from __future__ import annotations

import argparse
import collections
import os

from metatpt_jax.bench import records, report


def complete_records(recs: list[dict], num_images: int) -> list[dict]:
  counts = collections.Counter((r["method"], r["domain"], r["seed"]) for r in recs)
  return [r for r in recs if counts[(r["method"], r["domain"], r["seed"])] == num_images]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("output_dir")
  parser.add_argument("--num-images", type=int, default=500)
  args = parser.parse_args(argv)
  path = os.path.join(args.output_dir, "samples.jsonl")
  if not os.path.exists(path):
    raise SystemExit(f"{path} does not exist: point at a benchmark's output_dir.")
  recs = complete_records(records.RecordStore(path).all(), args.num_images)
  family = lambda m: 0 if m == "zero_shot" else 1 if m.startswith("tpt") else 2
  method_names = sorted({r["method"] for r in recs}, key=lambda m: (family(m), m))
  domains = list(dict.fromkeys(r["domain"] for r in recs))
  seeds = sorted({r["seed"] for r in recs})
  table = report.summary(report.aggregate(recs), method_names, domains)
  print(f"complete cells only; seeds {seeds}; {args.num_images} images per cell")
  print(report.markdown_table(table, method_names, domains, "acc"))
  print()
  print(report.markdown_table(table, method_names, domains, "ece"))


if __name__ == "__main__":
  main()

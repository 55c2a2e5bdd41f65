"""Tables from a benchmark's samples.jsonl, also while it runs or after it was interrupted.

    python -m metatpt_jax.bench.summarize runs/bench_small [--num-images 500]

Only complete cells count -- (setting fingerprint, method, domain, seed) with --num-images
records -- so a partly processed cell never enters a mean. Where one method name was run under
several settings (a sweep by overrides in one output_dir), each setting is its own row,
`<method>@<fingerprint>`, so records of different settings are never mixed.
"""
from __future__ import annotations

import argparse
import collections
import os

from metatpt_jax.bench import records, report


def _cell(r):
  return (r.get("fingerprint"), r["method"], r["domain"], r["seed"])


def complete_records(recs: list[dict], num_images: int) -> list[dict]:
  counts = collections.Counter(_cell(r) for r in recs)
  return [r for r in recs if counts[_cell(r)] == num_images]


def label_settings(recs: list[dict]) -> list[dict]:
  """Records with `method` renamed `<method>@<fingerprint>` where a method has several."""
  settings = collections.defaultdict(set)
  for r in recs:
    settings[r["method"]].add(r.get("fingerprint"))
  return [dict(r, method=f"{r['method']}@{r['fingerprint']}") if len(settings[r["method"]]) > 1
          else r for r in recs]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("output_dir")
  parser.add_argument("--num-images", type=int, default=500)
  args = parser.parse_args(argv)
  if not os.path.isdir(args.output_dir):
    raise SystemExit(f"{args.output_dir} does not exist: point at a benchmark's output_dir.")
  recs = label_settings(complete_records(records.RecordStore(args.output_dir).all(),
                                         args.num_images))
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

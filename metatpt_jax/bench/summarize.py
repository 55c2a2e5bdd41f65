"""Tables from a benchmark's samples.jsonl, also while it runs or after it was interrupted.

    python -m metatpt_jax.bench.summarize runs/bench_small [--num-images 500] [--baseline tpt]

Only complete cells count -- (setting fingerprint, method, domain, seed) with --num-images
records -- so a partly processed cell never enters a mean. Where one method name was run under
several settings (a sweep by overrides in one output_dir), each setting is its own row,
`<method>@<fingerprint>`, so records of different settings are never mixed.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os

from metatpt_jax.bench import records, report


def _cell(r):
  return (r.get("fingerprint"), r["method"], r["domain"], r["seed"])


def complete_records(recs: list[dict], num_images: int) -> list[dict]:
  counts = collections.Counter(_cell(r) for r in recs)
  return [r for r in recs if counts[_cell(r)] == num_images]


def method_setting_ids(settings: dict) -> dict:
  """{cell fingerprint: id of its method's setting}: the cell's setting without what varies
  from cell to cell of one run (domain, its class names, seed), hashed."""
  ids = {}
  for fingerprint, setting in settings.items():
    data = {k: v for k, v in setting.get("data", {}).items() if k not in ("domain", "class_names")}
    rest = {k: v for k, v in setting.items() if k not in ("data", "seed")}
    text = json.dumps(dict(rest, data=data), sort_keys=True)
    ids[fingerprint] = hashlib.sha256(text.encode()).hexdigest()[:8]
  return ids


def label_settings(recs: list[dict], settings: dict | None = None) -> list[dict]:
  """Records with `method` renamed `<method>@<setting id>` where one method name was run under
  several settings. With `settings` (settings.json: fingerprint -> setting) the cells of one
  setting share an id across domains and seeds; without it each fingerprint is its own."""
  ids = method_setting_ids(settings or {})
  setting = lambda r: ids.get(r.get("fingerprint"), r.get("fingerprint"))
  found = collections.defaultdict(set)
  for r in recs:
    found[r["method"]].add(setting(r))
  return [dict(r, method=f"{r['method']}@{setting(r)}") if len(found[r["method"]]) > 1
          else r for r in recs]


def read_settings(output_dir: str) -> dict:
  path = os.path.join(output_dir, records.SETTINGS_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("output_dir")
  parser.add_argument("--num-images", type=int, default=500)
  parser.add_argument("--baseline", action="append", default=None,
                      help="paired differences against this method (repeatable; default "
                           "zero_shot where present)")
  args = parser.parse_args(argv)
  if not os.path.isdir(args.output_dir):
    raise SystemExit(f"{args.output_dir} does not exist: point at a benchmark's output_dir.")
  recs = label_settings(complete_records(records.RecordStore(args.output_dir).all(),
                                         args.num_images), read_settings(args.output_dir))
  family = lambda m: 0 if m == "zero_shot" else 1 if m.startswith("tpt") else 2
  method_names = sorted({r["method"] for r in recs}, key=lambda m: (family(m), m))
  domains = list(dict.fromkeys(r["domain"] for r in recs))
  seeds = sorted({r["seed"] for r in recs})
  table = report.summary(report.aggregate(recs), method_names, domains)
  print(f"complete cells only; seeds {seeds}; {args.num_images} images per cell")
  print(report.markdown_table(table, method_names, domains, "acc"))
  print()
  print(report.markdown_table(table, method_names, domains, "ece"))
  baselines = args.baseline or (["zero_shot"] if "zero_shot" in method_names else [])
  for baseline in baselines:
    if baseline not in method_names:
      raise SystemExit(f"--baseline {baseline!r} has no complete cells; methods: "
                       f"{', '.join(method_names)}.")
    print()
    print(report.paired_table(report.paired_differences(recs, method_names, domains, baseline),
                              domains, baseline))


if __name__ == "__main__":
  main()

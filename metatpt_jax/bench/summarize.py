"""Tables from a benchmark's samples.jsonl, also while it runs or after it was interrupted.

    python -m metatpt_jax.bench.summarize runs/bench_small_v2_test [--baseline tpt]
        [--num-images N]

Only complete cells count -- (setting fingerprint, method, domain, seed) with as many records
as the cell has images -- so a partly processed cell never enters a mean. A cell's image count
is its setting's `data.num_images`, read from the output_dir's settings.json (written by
metatpt-bench); `--num-images N` overrides it for every cell (for a directory without
settings.json, or a domain that holds fewer images than it asked for). Where one method name
was run under several settings (a sweep by overrides in one output_dir), each setting is its own
row, `<method>@<setting id>`, so records of different settings are never mixed.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json

from metatpt_jax import errors
from metatpt_jax.bench import records, report, storage
from metatpt_jax.errors import UserError

PROGRAM = "metatpt_jax.bench.summarize"


def _cell(r):
  return (r.get("fingerprint"), r["method"], r["domain"], r["seed"])


def images_per_cell(recs: list[dict], num_images: int | None = None,
                    settings: dict | None = None) -> dict:
  """{fingerprint: images its cells hold when complete}: `num_images` for every cell, or else
  each setting's data.num_images (`settings`: settings.json, fingerprint -> setting)."""
  fingerprints = {r.get("fingerprint") for r in recs}
  if num_images is not None:
    return dict.fromkeys(fingerprints, num_images)
  sizes = {fp: (settings or {}).get(fp, {}).get("data", {}).get("num_images")
           for fp in fingerprints}
  missing = sorted(str(fp) for fp, n in sizes.items() if not isinstance(n, int))
  if missing:
    raise UserError(f"{len(missing)} of {len(sizes)} settings of the records have no image "
                    f"count in {records.SETTINGS_FILE} (e.g. fingerprint {missing[0]}); pass "
                    "--num-images <images per cell>.")
  return sizes


def complete_records(recs: list[dict], num_images: int | None = None,
                     settings: dict | None = None) -> list[dict]:
  """The records of complete cells: those holding as many images as `images_per_cell`. An image
  recorded twice in a cell (records merged from two copies of a run) counts once, by its first
  record, instead of making the cell look over-full and dropping it."""
  first = {}
  for r in recs:
    first.setdefault((_cell(r), r["index"]), r)
  counts = collections.Counter(cell for cell, _ in first)
  want = images_per_cell(recs, num_images, settings)
  return [r for r in first.values() if counts[_cell(r)] == want[r.get("fingerprint")]]


def method_setting_ids(settings: dict) -> dict:
  """{cell fingerprint: id of its method's setting}: the cell's setting without what varies
  from cell to cell of one run (domain, its class names, seed, and the domain's image count:
  a run over every image of domains of different sizes is one setting), hashed. The image count
  stays in the id of cells that differ from another cell of the same domain and seed by it
  alone (a sweep over image counts), so no two cells of one domain and seed share an id."""
  def digest(setting, with_count):
    drop = ("domain", "class_names") + (() if with_count else ("num_images",))
    data = {k: v for k, v in setting.get("data", {}).items() if k not in drop}
    rest = {k: v for k, v in setting.items() if k not in ("data", "seed")}
    text = json.dumps(dict(rest, data=data), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]

  ids = {fp: digest(setting, False) for fp, setting in settings.items()}
  cells = collections.defaultdict(list)
  for fp, setting in settings.items():
    cells[(ids[fp], setting.get("data", {}).get("domain"), setting.get("seed"))].append(fp)
  for fps in cells.values():
    if len(fps) > 1:
      for fp in fps:
        ids[fp] = digest(settings[fp], True)
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
  path = storage.join(output_dir, records.SETTINGS_FILE)
  if not storage.exists(path):
    return {}
  return json.loads(storage.read_bytes(path))


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("output_dir")
  parser.add_argument("--num-images", type=int, default=None,
                      help="records a complete cell holds, for every cell (default: each "
                           "cell's data.num_images from the output_dir's settings.json)")
  parser.add_argument("--baseline", action="append", default=None,
                      help="paired differences against this method (repeatable; default "
                           "zero_shot where present)")
  args = parser.parse_args(argv)
  if not storage.isdir(args.output_dir):
    raise UserError(f"{args.output_dir} does not exist: point at a benchmark's output_dir.")
  if args.num_images is not None and args.num_images < 1:
    raise UserError(f"--num-images {args.num_images}: give a positive count, or leave it out "
                    "to read each cell's count from settings.json.")
  return args


def _complete(args) -> tuple[list[dict], str]:
  """(complete records, labelled by setting; a line saying which cells count and why)."""
  recs = records.RecordStore(args.output_dir, read_only=True).all()
  settings = read_settings(args.output_dir)
  if recs and not settings and args.num_images is None:
    raise UserError(f"{args.output_dir} has no {records.SETTINGS_FILE} to read each cell's image "
                    "count from; pass --num-images <images per cell>.")
  kept = complete_records(recs, args.num_images, settings)
  cells, done = {_cell(r) for r in recs}, {_cell(r) for r in kept}
  sizes = sorted(set(images_per_cell(kept or recs, args.num_images, settings).values()))
  sizes = ", ".join(str(n) for n in sizes) or "-"
  source = "--num-images" if args.num_images is not None else records.SETTINGS_FILE
  line = (f"complete cells only: {len(done)} of {len(cells)}; seeds "
          f"{sorted({r['seed'] for r in kept})}; images per cell {sizes} (from {source})")
  if len(done) < len(cells) and args.num_images is None:
    line += ("; the others are still running, or their domain holds fewer images than its "
             "setting asks (then pass --num-images <its size>)")
  elif len(done) < len(cells):
    line += f"; the others do not hold {args.num_images} records"
  return label_settings(kept, settings), line


def _print_tables(recs: list[dict], baselines: list[str] | None) -> None:
  family = lambda m: 0 if m == "zero_shot" else 1 if m.startswith("tpt") else 2
  method_names = sorted({r["method"] for r in recs}, key=lambda m: (family(m), m))
  domains = list(dict.fromkeys(r["domain"] for r in recs))
  table = report.summary(report.aggregate(recs), method_names, domains)
  print(report.markdown_table(table, method_names, domains, "acc"))
  print()
  print(report.markdown_table(table, method_names, domains, "ece"))
  for baseline in baselines or (["zero_shot"] if "zero_shot" in method_names else []):
    if baseline not in method_names:
      raise UserError(f"--baseline {baseline!r} has no complete cells; methods: "
                      f"{', '.join(method_names)}.")
    print()
    print(report.paired_table(report.paired_differences(recs, method_names, domains, baseline),
                              domains, baseline))


def main(argv=None):
  with errors.report_user_errors(PROGRAM):
    args = _parse(argv)
    recs, line = _complete(args)
    print(line)
    print()
    _print_tables(recs, args.baseline)


if __name__ == "__main__":
  main()

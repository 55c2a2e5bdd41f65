"""World v3's backbone table from per-sample records: per backbone (CLIP, CoOp, MaPLe, MMRL), its
zero-shot accuracy and TPT's and MetaTPT's paired differences against it (and MetaTPT - TPT).

    python tools/backbone_table_v3.py                      # the committed records
    python tools/backbone_table_v3.py --records runs/bench_v3_backbones/samples.jsonl \\
        --settings runs/bench_v3_backbones/settings.json   # a run of one's own
    python tools/backbone_table_v3.py --dev --pair "maple (adapts ctx)" maple   # an ablation

Each record's backbone is read from its setting (settings.json: fingerprint -> setting): a
`prompt.backbone` (MaPLe, MMRL), a saved context file (CoOp) or neither (CLIP's own words); a
backbone tuned on other tensors than its default `adapt` is labelled by them, e.g. "maple (adapts
ctx)". `--pair A B` adds, per method, A's paired difference against B on the same images.
Only complete cells count, each record once (a record found in two files, e.g. CLIP's in the
main test records and in a backbone run's folder, counts once); a backbone/method run under two
settings (e.g. prompts retrained) is refused, so a table never mixes them. Differences are
paired per image (seeds averaged per image), with 95 % normal intervals over images, as
`metatpt_jax.bench.summarize` reports them.
"""
import argparse
import collections
import json
import pathlib

from metatpt_jax import backbones, cli_util, prompts
from metatpt_jax.bench import report, summarize

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
DEFAULT = [("bench_v3_test_samples.jsonl", "bench_v3_test_settings.json"),
           ("bench_v3_backbones_samples.jsonl", "bench_v3_backbones_settings.json")]
DEV = [("bench_v3_dev_samples.jsonl", "bench_v3_dev_settings.json"),
       ("bench_v3_backbones_dev_samples.jsonl", "bench_v3_backbones_dev_settings.json")]
BACKBONES = ("clip", "coop", "maple", "mmrl")
METHODS = ("zero_shot", "tpt", "metatpt")
ROWS = (("tpt", "zero_shot", "TPT - zero-shot"), ("metatpt", "zero_shot", "MetaTPT - zero-shot"),
        ("metatpt", "tpt", "MetaTPT - TPT"))  # (method, baseline, label)


def backbone_of(setting: dict) -> str:
  prompt = setting.get("prompt", {})
  if "backbone" in prompt:
    name, adapt = prompt["backbone"]["name"], tuple(prompt["backbone"].get("adapt") or ())
    default = backbones.BACKBONES[name].adapt
    return name if not adapt or adapt == default else f"{name} (adapts {', '.join(adapt)})"
  init = prompt.get("init") or ""
  return "coop" if prompt.get("init_sha256") or prompts.is_context_file(init) else "clip"


def load(pairs) -> dict:
  """{backbone: complete records of METHODS}, each (backbone, method) of a single setting."""
  by_backbone, seen = collections.defaultdict(list), collections.defaultdict(set)
  counted = set()
  for samples, settings_path in pairs:
    try:
      settings = json.loads(pathlib.Path(settings_path).read_text())
      recs = [json.loads(line) for line in open(samples)]
    except (OSError, ValueError) as err:
      raise SystemExit(f"backbone_table_v3: cannot read {samples} / {settings_path}: "
                       f"{err}") from None
    recs = [r for r in recs if r["method"] in METHODS and r["fingerprint"] in settings]
    ids = summarize.method_setting_ids(settings)
    for r in summarize.complete_records(recs, settings=settings):
      key = (r["fingerprint"], r["method"], r["domain"], r["seed"], r["index"])
      if key in counted:
        continue
      counted.add(key)
      name = backbone_of(settings[r["fingerprint"]])
      seen[(name, r["method"])].add(ids[r["fingerprint"]])
      by_backbone[name].append(r)
  mixed = {k: v for k, v in seen.items() if len(v) > 1}
  if mixed:
    raise SystemExit(f"{sorted(mixed)} ran under several settings in these records; give "
                     "records of one setting each (e.g. the run's own output folder only).")
  return by_backbone


def rows(label: str, recs: list, domains: list[str]) -> None:
  """Print `label`'s zero-shot accuracy row and its ROWS of paired differences."""
  table = report.summary(report.aggregate(recs), ["zero_shot"], domains)["zero_shot"]
  acc = [f"{table[f'{d}/acc'][0]:.1f}" if f"{d}/acc" in table else "" for d in domains]
  acc.append(f"{table['mean/acc'][0]:.1f}" if "mean/acc" in table else "")
  print(f"| {label} | zero-shot (acc %) | " + " | ".join(acc) + " |")
  for method, baseline, name in ROWS:
    print(f"| {label} | {name} | " + cells(recs, method, baseline, domains) + " |")


def cells(recs: list, method: str, baseline: str, domains: list[str]) -> str:
  diff = report.paired_differences(recs, [method], domains, baseline).get(method, {})
  if not all(d in diff for d in domains):  # a mean over the domains present would mislead
    diff.pop("mean", None)
  return " | ".join(f"{diff[c][0]:+.1f} ± {diff[c][1]:.1f}" if c in diff else ""
                    for c in domains + ["mean"])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--records", action="append", default=[])
  parser.add_argument("--settings", action="append", default=[])
  parser.add_argument("--dev", action="store_true",
                      help="the committed development records instead of the test records")
  parser.add_argument("--pair", nargs=2, metavar=("A", "B"),
                      help="also print A - B per method, paired over the images both hold")
  args = parser.parse_args()
  if len(args.records) != len(args.settings):
    parser.error("give one --settings per --records")
  pairs = (list(zip(args.records, args.settings)) if args.records
           else [(RESULTS / s, RESULTS / t) for s, t in (DEV if args.dev else DEFAULT)])
  by_backbone = load(pairs)
  if args.pair and not set(args.pair) <= set(by_backbone):
    parser.error(f"--pair: these records hold {', '.join(map(repr, sorted(by_backbone)))}")
  found = {r["domain"] for recs in by_backbone.values() for r in recs}
  order = list(cli_util.sibling_config(str(ROOT / "configs" / "bench_v3.py"), "bench_v3",
                                       "test").data.domains)  # the test run's order
  domains = [d for d in order if d in found] + sorted(found - set(order))
  cols = [d.removeprefix("artwork:") for d in domains] + ["mean"]
  print("| backbone | row | " + " | ".join(cols) + " |")
  print("|---" * (len(cols) + 2) + "|")
  for label in list(BACKBONES) + sorted(set(by_backbone) - set(BACKBONES)):
    if by_backbone.get(label):
      rows(label, by_backbone[label], domains)
    else:
      print(f"| {label} | (no complete cells) |" + " |" * len(cols))
  if args.pair:
    a, b = args.pair
    tagged = [dict(r, method=f"{r['method']}@{tag}")
              for tag in (a, b) for r in by_backbone[tag]]
    for method in METHODS:
      print(f"| {a} - {b} | {method} | "
            + cells(tagged, f"{method}@{a}", f"{method}@{b}", domains) + " |")


if __name__ == "__main__":
  main()

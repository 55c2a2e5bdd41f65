"""The throughput benchmark's targets and its Markdown table (`throughput.run` writes both).

Targets come from the config (`cfg.targets`), keyed by number of classes (or architecture for
compile-only memory), so a run states which were met beside the figures that decide them.
"""
from __future__ import annotations

GIB = 2 ** 30


def _best(rows, method, num_classes):
  """The row of `method` at `num_classes` with the most samples per second (None if none ran)."""
  ran = [r for r in rows if r["method"] == method and r["num_classes"] == num_classes
         and "samples_per_s" in r]
  return max(ran, key=lambda r: r["samples_per_s"]) if ran else None


def _compiled(rows, method, num_classes):
  """The batch-1 row of `method` at `num_classes` that was at least compiled (None if none)."""
  return next((r for r in rows if r["method"] == method and r["num_classes"] == num_classes
               and r["batch"] == 1 and r.get("memory")), None)


def _at(table, key):
  return dict(table or {}).get(str(key))


def _gib(row):
  return row["memory"]["peak"] / GIB


def targets(out: dict, cfg) -> list:
  """Each configured goal at each class count it names, with the measured value.

  "tpt" rows face the PyTorch loop; `cfg.meta_target_pair` names the (TPT, MetaTPT second
  order) rows compared for time and FLOP/s. Memory goals read the batch-1 compiled program.
  """
  t, rows, res = cfg.targets, out["rows"], []
  ceiling = out["ceiling"]["flops_per_s"]
  tpt_name, meta_name = cfg.meta_target_pair
  add = lambda goal, c, value, met, detail: res.append(dict(
      goal=goal, num_classes=c, value=value, met=None if met is None else bool(met),
      detail=detail))
  for c in cfg.num_classes:
    tpt_row, torch_row = _best(rows, "tpt", c), next(
        (r for r in out["torch"] if r["num_classes"] == c), None)
    goal = _at(t.get("tpt_vs_torch"), c)
    if goal and tpt_row and torch_row and "skipped" in torch_row:
      add(f"JAX TPT >= {goal:g}x the PyTorch loop's samples/s", c, float("nan"), None,
          f"PyTorch loop not run: {torch_row['skipped']}")
    elif goal and tpt_row and torch_row:
      ratio = tpt_row["samples_per_s"] / torch_row["samples_per_s"]
      add(f"JAX TPT >= {goal:g}x the PyTorch loop's samples/s", c, ratio, ratio >= goal,
          f"batch {tpt_row['batch']}: {tpt_row['samples_per_s']:.4f} vs "
          f"{torch_row['samples_per_s']:.4f} samples/s")
    for name, table in ((tpt_name, t.get("tpt_memory_gib")),
                        (meta_name, t.get("meta_memory_gib"))):
      goal, row = _at(table, c), _compiled(rows, name, c)
      if goal and row:
        add(f"{name} compiled memory <= {goal:g} GiB", c, _gib(row), _gib(row) <= goal,
            "batch 1" + (f" ({row['skipped']})" if "skipped" in row else ""))
    pair_tpt, meta = _best(rows, tpt_name, c), _best(rows, meta_name, c)
    goal = _at(t.get("meta_vs_tpt"), c)
    if goal and pair_tpt and meta:
      ratio = meta["s_per_sample"] / pair_tpt["s_per_sample"]
      flops = meta["flops_per_sample"] / pair_tpt["flops_per_sample"]
      add(f"MetaTPT 2nd order <= {goal:g}x JAX TPT's time per sample", c, ratio, ratio <= goal,
          f"{meta_name} {meta['s_per_sample']:.2f} s vs {tpt_name} "
          f"{pair_tpt['s_per_sample']:.2f} s; FLOPs per sample {flops:.2f}x")
    goal = _at(t.get("meta_ceiling"), c)
    if goal and meta:
      frac = meta["flops_per_s"] / ceiling
      add(f"MetaTPT step >= {100 * goal:g}% of the large-matmul FLOP/s", c, frac, frac >= goal,
          f"{meta_name}: {meta['flops_per_s'] / 1e9:.1f} of {ceiling / 1e9:.1f} GFLOP/s")
  for r in out["compile_only"]:
    goal = _at(t.get("compile_only_memory_gib"), r["arch"])
    if goal and r["method"] == meta_name and (r["compute_dtype"], r["remat"]) == ("float32", False):
      add(f"{r['arch']} {meta_name} compiled memory <= {goal:g} GiB", r["num_classes"],
          _gib(r), _gib(r) <= goal, "fp32, no remat, compile only")
  return res


def report(out: dict) -> str:
  """The run as Markdown: the cells, compile-only memory, and the targets."""
  ceiling = out["ceiling"]["flops_per_s"]
  cfg = out["config"]
  lines = [f"## Throughput: {cfg['arch']}, {cfg['n_views']} views, {cfg['compute_dtype']}, "
           f"remat={cfg['remat']}, class_chunk={cfg['class_chunk']}, backend {out['backend']} "
           f"({len(out['devices'])} device(s)), XLA_FLAGS={out['xla_flags'] or '(none)'}",
           "",
           f"Ceiling: {cfg['matmul_size']}x{cfg['matmul_size']} fp32 matmul "
           f"{ceiling / 1e9:.1f} GFLOP/s in JAX"
           + (f", {out['torch_ceiling']['flops_per_s'] / 1e9:.1f} GFLOP/s in PyTorch"
              if "torch_ceiling" in out else "") + ".",
           "",
           "| method | classes | batch | compile s | s/step | samples/s | s/sample | "
           "GFLOP/sample | GFLOP/s | % ceiling | memory GiB |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for t in out["torch"]:
    if "skipped" in t:
      lines.append(f"| PyTorch TPT loop | {t['num_classes']} | 1 | - | skipped: {t['skipped']} "
                   "| | | | | | |")
      continue
    lines.append(f"| PyTorch TPT loop | {t['num_classes']} | 1 | - | {t['s_per_sample']:.2f} | "
                 f"{t['samples_per_s']:.4f} | {t['s_per_sample']:.2f} | - | - | - | - |")
  for r in out["rows"]:
    head = f"| {r['method']} | {r['num_classes']} | {r['batch']} |"
    mem = r.get("memory", {}).get("peak")
    mem = f"{mem / GIB:.2f}" if mem else "-"
    if "s_per_sample" not in r:
      comp = f"{r['compile_s']:.0f}" if "compile_s" in r else "-"
      lines.append(f"{head} {comp} | skipped: {r['skipped']} | | | | | | {mem} |")
      continue
    lines.append(f"{head} {r['compile_s']:.1f} | {r['step_s']:.2f} | {r['samples_per_s']:.4f} | "
                 f"{r['s_per_sample']:.2f} | {r['flops_per_sample'] / 1e9:.3g} | "
                 f"{r['flops_per_s'] / 1e9:.1f} | {100 * r['flops_per_s'] / ceiling:.0f} | "
                 f"{mem} |")
  lines += _compile_only_table(out["compile_only"])
  if out["targets"]:
    lines += ["", "| goal | classes | measured | met | detail |", "|---|---|---|---|---|"]
    for t in out["targets"]:
      met = {True: "yes", False: "NO", None: "not measured"}[t["met"]]
      lines.append(f"| {t['goal']} | {t['num_classes']} | {t['value']:.2f} | {met} | "
                   f"{t['detail']} |")
  lines += ["", f"Peak resident memory of the process: {out['peak_rss_gib']:.1f} GiB.",
            "Random weights: costs only, never accuracy.", ""]
  return "\n".join(lines)


def _compile_only_table(rows) -> list:
  if not rows:
    return []
  lines = ["", "Compiled memory per sample (batch 1, compile only):", "",
           "| arch | method | classes | dtype | remat | GiB | GFLOP/sample |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['arch']} | {r['method']} | {r['num_classes']} | {r['compute_dtype']} "
                 f"| {r['remat']} | {r['memory'].get('peak', 0) / GIB:.2f} | "
                 f"{r['flops'] / 1e9:.3g} |")
  return lines

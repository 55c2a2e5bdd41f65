"""`metatpt-throughput --config configs/throughput.py[:tiny]`: per-sample cost of each method.

For every (method, number of classes, batch size) cell, on random weights of the configured
architecture: compile time, seconds per step, samples per second, FLOPs per sample (XLA's cost
analysis of the compiled step), achieved FLOP/s, and the compiled program's memory (arguments +
outputs + temporaries). In the same run: TPT as a one-image-at-a-time PyTorch loop
(`torch_tpt.TorchTPT` on a transformers `CLIPModel` holding the same weights), and the FLOP/s of
one large fp32 matrix product, the ceiling. Writes results.json and results.md; prints the table
and the configured targets (`cfg.targets`: JAX/PyTorch TPT ratio, compiled memory, MetaTPT/TPT
time ratio, MetaTPT FLOP/s vs the ceiling; `throughput_report.py`).

Cells that would not fit are skipped with the reason recorded, never silently: memory above
`memory_limit_gib` (known from the compiled program before it runs) or a time estimate above
`max_seconds_per_cell` (from the same method's smallest batch). Random weights: these figures
are about cost, never accuracy.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app
from ml_collections import config_flags

from metatpt_jax import adapt, prompts
from metatpt_jax.bench import methods as methods_lib
from metatpt_jax.bench.throughput_report import report, targets
from metatpt_jax.clip import config as clip_config
from metatpt_jax.clip import model as clip_model
from metatpt_jax.data import benchmarks

GIB = 2 ** 30


# ------------------------------------------------------------------ analytic counts
def vit_forward_flops(arch: clip_config.CLIPArch) -> float:
  """Matmul FLOPs (2 per multiply-add) of one image through the vision tower.

  Patch embedding, per layer QKV + output projections, attention scores and values, the MLP,
  and the final projection; layer norms, softmax and activations are left out (< 1%).
  """
  v = arch.vision
  n, p, w = v.num_patches + 1, v.patch_size, v.width
  per_layer = 2 * n * (4 * w * w) + 2 * 2 * n * n * w + 2 * n * (2 * w * v.mlp_ratio * w)
  return float(2 * v.num_patches * (3 * p * p) * w + v.layers * per_layer + 2 * w * arch.embed_dim)


def text_forward_flops(arch: clip_config.CLIPArch, num_prompts: int) -> float:
  """Matmul FLOPs of `num_prompts` full-context prompts through the text tower."""
  t = arch.text
  n, w = t.context_length, t.width
  per_layer = 2 * n * (4 * w * w) + 2 * 2 * n * n * w + 2 * n * (2 * w * t.mlp_ratio * w)
  return float(num_prompts * (t.layers * per_layer + 2 * w * arch.embed_dim))


def cost_flops(compiled) -> float:
  """FLOPs XLA's cost analysis counts for a compiled (or lowered) program (0 if none)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))


def memory_bytes(compiled) -> dict:
  """Arguments, outputs, temporaries and their sum (peak estimate) of a compiled program."""
  mem = compiled.memory_analysis()
  if mem is None:
    return {}
  out = dict(arguments=mem.argument_size_in_bytes, outputs=mem.output_size_in_bytes,
             temporaries=mem.temp_size_in_bytes, aliased=mem.alias_size_in_bytes)
  out["peak"] = out["arguments"] + out["outputs"] + out["temporaries"] - out["aliased"]
  return out


def peak_rss_gib() -> float:
  """This process's peak resident memory so far (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


# ------------------------------------------------------------------ the ceiling
def _ceiling(matmul, size: int, repeats: int) -> dict:
  """FLOP/s of `matmul()` (one [size, size] product; median of `repeats` after a warm-up)."""
  matmul()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    matmul()
    times.append(time.perf_counter() - start)
  t = statistics.median(times)
  return dict(size=size, seconds=t, flops_per_s=2 * size ** 3 / t)


def matmul_ceiling(size: int, repeats: int = 5) -> dict:
  """FLOP/s of one [size, size] x [size, size] fp32 product in JAX."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
  f = jax.jit(jnp.matmul)
  return _ceiling(lambda: f(a, b).block_until_ready(), size, repeats)


def torch_matmul_ceiling(size: int, repeats: int = 5) -> dict:
  """The same product in PyTorch."""
  import torch
  a, b = torch.randn(size, size), torch.randn(size, size)
  return _ceiling(lambda: a @ b, size, repeats)


# ------------------------------------------------------------------ setups
def random_model(arch_name: str, seed: int = 0):
  arch = clip_config.get_arch(arch_name)
  return clip_model.init_params(jax.random.key(seed), arch), arch


def class_names(num_classes: int) -> list:
  """Real class names, so prompts have real token lengths (the text tower's cost follows the
  longest prompt): ImageNet-R's 200 at 200 classes, otherwise ImageNet's first `num_classes`."""
  if num_classes == 200:
    return list(benchmarks.load_classes("imagenet_r")["classnames"])
  names = list(benchmarks.load_classes("imagenet")["classnames"])
  if num_classes > len(names):
    raise ValueError(f"num_classes={num_classes}: at most {len(names)} (ImageNet's names).")
  return names[:num_classes]


def adapt_state(params, arch, num_classes, kind, spec, n_ctx, seed,
                prompt_cfg=None) -> adapt.AdaptState:
  """The benchmark's state (`methods.build_state`) for `class_names(num_classes)`; a prompt
  backbone where `prompt_cfg` names one (its random init: costs only)."""
  prompt = ml_collections.ConfigDict(dict(n_ctx=n_ctx, init="a photo of a"))
  if prompt_cfg is not None and prompt_cfg.get("backbone"):
    prompt = ml_collections.ConfigDict(dict(prompt_cfg.to_dict(), n_ctx=n_ctx))
  return methods_lib.build_state(params, arch, class_names(num_classes), prompt, kind, spec, seed)


def random_batch(arch, batch_size: int, seed: int) -> dict:
  size = arch.vision.image_size
  images = jax.random.uniform(jax.random.key(seed), (batch_size, size, size, 3), jnp.float32)
  return {"image": images, "index": jnp.arange(batch_size, dtype=jnp.int32)}


# ------------------------------------------------------------------ measurements
def measure_jax_cell(step, state, batch, repeats: int, memory_limit_gib: float,
                     compile_only: bool = False, count_step=None, warmup: bool = True) -> dict:
  """Compiles `step.jitted` for this state/batch, checks its memory, then times it.

  `count_step`: the same computation without loops over chunks, compiled only for its FLOP
  count (XLA's cost analysis counts a while-loop body once, not once per iteration, so a
  chunked program's own count misses most of its work; the recomputation chunks add is real
  time but not counted, so FLOP/s of a chunked row are the useful work's).
  """
  key = jax.random.key(0)
  start = time.perf_counter()
  compiled = step.jitted.lower(state, batch, key).compile()
  row = dict(compile_s=time.perf_counter() - start, memory=memory_bytes(compiled))
  if count_step is None:
    row["flops"] = cost_flops(compiled)
  else:
    # Compiled, not just lowered: the unoptimised program over-counts (12.1 against 9.5 TFLOP
    # for B/16 second order at 64 views; XLA's simplification removes repeated work).
    row["flops"] = cost_flops(count_step.jitted.lower(state, batch, key).compile())
    row["flops_counted_on"] = "the same step without chunks"
  peak = row["memory"].get("peak", 0) / GIB
  if peak > memory_limit_gib:
    return dict(row, skipped=f"needs {peak:.1f} GiB > memory_limit_gib {memory_limit_gib:g}")
  if compile_only:
    return dict(row, skipped="compile only (memory and FLOPs)")
  if warmup:  # an untimed first run: allocations, page faults
    jax.block_until_ready(compiled(state, batch, key))
  times = []
  for r in range(repeats):
    k = jax.random.fold_in(key, r + 1)
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(state, batch, k))
    times.append(time.perf_counter() - t0)
  t = statistics.median(times)
  b = batch["image"].shape[0]
  return dict(row, step_s=t, step_times=times, samples_per_s=b / t, s_per_sample=t / b,
              flops_per_s=row["flops"] / t, flops_per_sample=row["flops"] / b)


def measure_torch_tpt(params, arch, num_classes: int, n_views: int, selection_ratio: float,
                      samples: int, n_ctx: int, threads: int, workdir: str,
                      warmup: bool = True) -> dict:
  """TPT one image at a time in PyTorch (the public loop), on the same weights: s/sample."""
  import torch
  import transformers

  from metatpt_jax.bench import torch_tpt
  from metatpt_jax.clip import checkpoint
  from metatpt_jax.clip.tokenizer import default_tokenizer
  if threads:
    torch.set_num_threads(threads)
  directory = os.path.join(workdir, "torch_weights")
  if not os.path.exists(os.path.join(directory, "config.json")):
    checkpoint.save_hf(params, arch, directory)
  model = transformers.CLIPModel.from_pretrained(directory).eval()  # default (sdpa) attention
  for p in model.parameters():
    p.requires_grad_(False)
  texts = [" ".join(["X"] * n_ctx) + f" {name}." for name in class_names(num_classes)]
  ids = default_tokenizer()(texts, context_length=arch.text.context_length)
  ctx = prompts.init_context(params, arch, n_ctx=n_ctx, init="a photo of a")
  ref = torch_tpt.TorchTPT(model, np.asarray(ids), np.asarray(ctx), n_ctx=n_ctx)
  gen_ = torch.Generator().manual_seed(0)
  size = arch.vision.image_size
  images = np.random.default_rng(0).uniform(size=(samples + warmup, size, size, 3)).astype(
      np.float32)
  times = []
  for i, image in enumerate(images):  # with warmup, image 0 warms up the allocator; not timed
    t0 = time.perf_counter()
    ref.reset()
    pixels = torch_tpt.random_resized_crop_views(image, n_views, gen_)
    ref.adapt(pixels, steps=1, top=selection_ratio, reencode_view0=True)
    if i or not warmup:
      times.append(time.perf_counter() - t0)
  t = statistics.median(times)
  return dict(s_per_sample=t, samples_per_s=1 / t, times=times, threads=torch.get_num_threads(),
              torch=torch.__version__, transformers=transformers.__version__)


# ------------------------------------------------------------------ the run
def _count_step(kind, spec, mspec):
  """The step without chunk loops, for FLOP counting (None when the step has none)."""
  chunked = getattr(spec, "view_chunk", 0) or mspec.class_chunk
  if not chunked:
    return None
  if getattr(spec, "view_chunk", 0):
    spec = spec.replace(view_chunk=0)
  return adapt.make_step(kind, spec, mspec._replace(class_chunk=0))


def _estimate(rows, name, classes, batch):
  """Seconds a cell would take (compile excluded), from the same method's smallest batch."""
  known = [r for r in rows if r["method"] == name and r["num_classes"] == classes
           and "s_per_sample" in r]
  if not known:
    known = [r for r in rows if r["method"] == name and "s_per_sample" in r]
  if not known:
    return 0.0
  return max(r["s_per_sample"] for r in known) * batch


def _say(msg):
  print(msg, flush=True)


def _model_spec(cfg, arch, dtype=None, remat=None):
  return methods_lib.model_spec(ml_collections.ConfigDict(dict(
      compute_dtype=dtype or cfg.compute_dtype, remat=cfg.remat if remat is None else remat,
      class_chunk=cfg.class_chunk)), arch, cfg.get("prompt"))


def _measure_class_count(cfg, out, params, arch, mspec, num_classes):
  """The PyTorch loop and every method's cells (each batch size) at one class count."""
  rows = out["rows"]
  limit = cfg.get("torch_max_classes", 0)
  if cfg.torch_reference and limit and num_classes > limit:
    out["torch"].append(dict(num_classes=num_classes, skipped=(
        f"num_classes > torch_max_classes {limit} (its memory; see the config)")))
    _say(f"torch TPT loop, {num_classes} classes: {out['torch'][-1]['skipped']}")
  elif cfg.torch_reference:
    _say(f"torch TPT loop, {num_classes} classes ...")
    ref = measure_torch_tpt(params, arch, num_classes, cfg.n_views,
                            cfg.methods.tpt.selection_ratio, cfg.torch_samples, cfg.n_ctx,
                            cfg.torch_threads, cfg.output_dir, warmup=cfg.warmup)
    out["torch"].append(dict(ref, num_classes=num_classes))
    _say(f"  {ref['s_per_sample']:.2f} s/sample")
  only = dict(cfg.methods_at).get(num_classes) or dict(cfg.methods_at).get(str(num_classes))
  for name, mcfg in cfg.methods.items():
    if only and name not in only:
      continue
    kind, spec = methods_lib.method_spec(mcfg)
    step, count_step = adapt.make_step(kind, spec, mspec), _count_step(kind, spec, mspec)
    state = adapt_state(params, arch, num_classes, kind, spec, cfg.n_ctx, cfg.seed,
                        cfg.get("prompt"))
    for batch_size in cfg.batch_sizes:
      cell = dict(method=name, num_classes=num_classes, batch=batch_size)
      estimate = _estimate(rows, name, num_classes, batch_size) * (cfg.repeats + cfg.warmup)
      if estimate > cfg.max_seconds_per_cell:
        rows.append(dict(cell, skipped=f"estimated {estimate:.0f} s > max_seconds_per_cell "
                                       f"{cfg.max_seconds_per_cell:g}"))
        _say(f"{name} C={num_classes} B={batch_size}: {rows[-1]['skipped']}")
        continue
      _say(f"{name} C={num_classes} B={batch_size} ...")
      r = measure_jax_cell(step, state, random_batch(arch, batch_size, cfg.seed), cfg.repeats,
                           cfg.memory_limit_gib, count_step=count_step, warmup=cfg.warmup)
      rows.append(dict(cell, **r))
      save(cfg, out)  # a killed run keeps every finished cell
      _say("  " + (r.get("skipped") or f"{r['s_per_sample']:.2f} s/sample, "
                   f"{r['flops_per_s'] / 1e9:.1f} GFLOP/s, compile {r['compile_s']:.0f} s"))


def _compile_only(cfg, out, arch_name):
  """Memory and FLOPs per sample (nothing run) of the compile-only methods and policies."""
  params, arch = random_model(arch_name, cfg.seed)
  for dtype, remat in cfg.compile_only_policies:
    ms = _model_spec(cfg, arch, dtype, remat)
    for name in cfg.compile_only_methods:
      kind, spec = methods_lib.method_spec(cfg.methods[name])
      _say(f"compile only: {arch_name} {name} {dtype} remat={remat} ...")
      r = measure_jax_cell(adapt.make_step(kind, spec, ms),
                           adapt_state(params, arch, cfg.num_classes[0], kind, spec, cfg.n_ctx,
                                       cfg.seed, cfg.get("prompt")),
                           random_batch(arch, 1, cfg.seed), 0, float("inf"),
                           compile_only=True, count_step=_count_step(kind, spec, ms))
      out["compile_only"].append(dict(arch=arch_name, method=name, compute_dtype=dtype,
                                      remat=remat, num_classes=cfg.num_classes[0], **r))


def run(cfg: ml_collections.ConfigDict) -> str:
  os.makedirs(cfg.output_dir, exist_ok=True)
  out = dict(config=cfg.to_dict(), xla_flags=os.environ.get("XLA_FLAGS", ""),
             backend=jax.default_backend(),
             devices=[str(d) for d in jax.devices()], jax=jax.__version__, rows=[], torch=[],
             compile_only=[])
  out["ceiling"] = matmul_ceiling(cfg.matmul_size)
  _say(f"ceiling: {cfg.matmul_size}^2 fp32 matmul {out['ceiling']['flops_per_s'] / 1e9:.1f} "
       "GFLOP/s (JAX)")
  if cfg.torch_reference:
    out["torch_ceiling"] = torch_matmul_ceiling(cfg.matmul_size)
  params, arch = random_model(cfg.arch, cfg.seed)
  out["analytic"] = dict(vit_forward_flops=vit_forward_flops(arch),
                         text_forward_flops_per_prompt=text_forward_flops(arch, 1))
  for num_classes in cfg.num_classes:
    _measure_class_count(cfg, out, params, arch, _model_spec(cfg, arch), num_classes)
  for arch_name in cfg.compile_only_archs:  # memory per sample for the scaling note
    _compile_only(cfg, out, arch_name)
  return save(cfg, out)


def save(cfg, out: dict) -> str:
  """Writes results.json and results.md (so far) and returns the Markdown."""
  out["peak_rss_gib"] = peak_rss_gib()
  out["targets"] = targets(out, cfg)
  text = report(out)
  with open(os.path.join(cfg.output_dir, "results.json"), "w") as f:
    json.dump(out, f, indent=1, default=float)
  with open(os.path.join(cfg.output_dir, "results.md"), "w") as f:
    f.write(text)
  return text


_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to configs/throughput.py.",
                                          lock_config=True)


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; use --config.<field>=<value>.")
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config configs/throughput.py:tiny")
  if _CONFIG.value.xla_flags and "XLA_FLAGS" not in os.environ:
    os.environ["XLA_FLAGS"] = _CONFIG.value.xla_flags  # read when the backend starts, below
  print(run(_CONFIG.value))


def main(argv=None):
  app.run(_main, argv=argv if argv is not None else sys.argv)


if __name__ == "__main__":
  main()

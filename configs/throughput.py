"""Throughput of zero-shot, TPT and MetaTPT (first and second order) against a PyTorch TPT loop.

    metatpt-throughput --config configs/throughput.py          # ViT-B/16, 224 px, 64 views, fp32
    metatpt-throughput --config configs/throughput.py:cpu      # the subset 2 CPU cores can run
    metatpt-throughput --config configs/throughput.py:tiny     # seconds: tiny CLIP, 8 views
    metatpt-throughput --config configs/throughput.py:scaling  # compile only: memory, B/16 + L/14
    metatpt-throughput --config configs/throughput.py --config.compute_dtype=bfloat16  # accelerators

Random weights (costs only). Cells that exceed `memory_limit_gib` (checked on the compiled program
before it runs) or `max_seconds_per_cell` (estimated from the method's smallest batch) are skipped
and reported as such.
"""
import ml_collections

from metatpt_jax.bench import defaults


def get_config(arg: str = ""):
  c = ml_collections.ConfigDict()
  c.arch = "ViT-B/16"
  c.n_views = 64
  c.n_ctx = 4
  c.num_classes = (10, 200)
  c.batch_sizes = (1, 2, 4)
  c.compute_dtype = "float32"   # "bfloat16": bf16 matmuls, fp32 norms, softmax and losses
  c.remat = False
  c.methods = dict(
      zero_shot=dict(kind="zero_shot"),
      tpt=defaults.tpt_method(n_views=c.n_views),
      metatpt_first=defaults.metatpt_method(n_views=c.n_views, order="first"),
      metatpt_second=defaults.metatpt_method(n_views=c.n_views, order="second"),
      # The same step differentiating through every view's encoding (the unoptimised outer loss).
      metatpt_second_all_views=defaults.metatpt_method(n_views=c.n_views, order="second",
                                                       recompute_kept=False),
  )
  c.repeats = 2                  # timed calls per cell after the first (compile + warm-up) call
  c.torch_reference = True       # TPT as the public one-image PyTorch loop, same weights
  c.torch_samples = 2            # timed images (after one warm-up image)
  c.torch_threads = 0            # 0: PyTorch's default (all cores)
  c.matmul_size = 4096           # the ceiling: one [n, n] x [n, n] fp32 product
  c.memory_limit_gib = 20.0      # skip cells whose compiled program needs more
  c.max_seconds_per_cell = 900.0
  # Compile-only cells (memory and FLOPs per sample, nothing run): the scaling note's figures.
  c.compile_only_archs = ()
  c.compile_only_methods = ("tpt", "metatpt_second")
  c.compile_only_policies = (("float32", False), ("float32", True), ("bfloat16", True))
  # (TPT, MetaTPT 2nd order) rows compared by the time-ratio and FLOP/s targets.
  c.meta_target_pair = ("tpt", "metatpt_second")
  # Restrict the methods run at some class counts (default: every method at every count).
  c.methods_at = {}
  # XLA flags set before JAX starts (the CLI only; e.g. XNNPACK fusion on CPU, see
  # docs/THROUGHPUT.md). An XLA_FLAGS already in the environment wins.
  c.xla_flags = ""
  c.seed = 0
  c.output_dir = "runs/throughput"
  if arg == "cpu":  # what 2 CPU cores can measure in ~25 minutes (docs/THROUGHPUT.md)
    c.batch_sizes = (1, 2)
    c.repeats = 1
    c.torch_samples = 1
    # MetaTPT 2nd order at 64 views needs 23.2 GiB compiled (fp32, batch 1) and does not fit in
    # this machine's 24 GiB; at 32 views it does, so the MetaTPT/TPT targets use a 32-view pair.
    c.methods.tpt_32views = defaults.tpt_method(n_views=32)
    c.methods.metatpt_second_32views = defaults.metatpt_method(n_views=32, order="second")
    c.methods.metatpt_first_32views = defaults.metatpt_method(n_views=32, order="first")
    del c.methods["metatpt_second_all_views"]
    c.methods.metatpt_second_all_views_32views = defaults.metatpt_method(
        n_views=32, order="second", recompute_kept=False)
    c.meta_target_pair = ("tpt_32views", "metatpt_second_32views")
    c.methods_at = {200: ("zero_shot", "tpt", "tpt_32views", "metatpt_second_32views")}
    c.max_seconds_per_cell = 150.0
    c.output_dir = "runs/throughput_cpu"
  elif arg == "tiny":
    c.arch = "tiny"
    c.n_views = 8
    c.num_classes = (3, 5)
    c.batch_sizes = (1, 2)
    for name, m in c.methods.items():
      if name != "zero_shot":
        m.n_views = 8
        m.selection_ratio = 0.25
    c.torch_samples = 1
    c.matmul_size = 512
    c.compile_only_archs = ("tiny",)
    c.compile_only_policies = (("float32", False), ("float32", True))
    c.output_dir = "runs/throughput_tiny"
  elif arg == "scaling":  # compile only: memory per sample at B/16 and L/14 (minutes, no runs)
    c.num_classes = (200,)
    c.batch_sizes = ()
    c.torch_reference = False
    c.compile_only_archs = ("ViT-B/16", "ViT-L/14")
    c.output_dir = "runs/throughput_scaling"
  elif arg:
    raise ValueError(f"Unknown variant {arg!r}; valid: '', 'cpu', 'tiny' or 'scaling'.")
  return c

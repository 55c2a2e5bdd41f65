"""Throughput of zero-shot, TPT and MetaTPT (first and second order) against a PyTorch TPT loop.

    metatpt-throughput --config configs/throughput.py          # ViT-B/16, 224 px, 64 views, fp32
    metatpt-throughput --config configs/throughput.py:cpu      # the subset 2 CPU cores can run
    metatpt-throughput --config configs/throughput.py:tiny     # seconds: tiny CLIP, 8 views
    metatpt-throughput --config configs/throughput.py:scaling  # compile only: memory, B/16 + L/14
    metatpt-throughput --config configs/throughput.py:baselines  # ZERO, C-TPT, MTA, TDA beside TPT
    metatpt-throughput --config configs/throughput.py --config.compute_dtype=bfloat16  # accelerators
    metatpt-throughput --config configs/throughput.py:accelerator  # one GPU / TPU chip, real scale
    metatpt-throughput --config configs/throughput.py:maple3  # also :maple9, :mmrl, :clip beside

Random weights (costs only). Cells that exceed `memory_limit_gib` (checked on the compiled program
before it runs) or `max_seconds_per_cell` (estimated from the method's smallest batch) are skipped
and reported as such.
"""
import ml_collections

from metatpt_jax.bench import defaults

# Generated views per chunk of MetaTPT's inner gradient (MetaTPTSpec.view_chunk): memory grows
# with it, not with n_views; chosen from the compile-only sweep in docs/THROUGHPUT.md.
VIEW_CHUNK = 8
# Goals, by number of classes (compile-only memory: by architecture); see throughput_report.
TARGETS = dict(
    tpt_vs_torch={"10": 0.95, "200": 1.5, "1000": 2.5},  # JAX TPT / PyTorch loop samples/s
    tpt_memory_gib={"200": 3.0},                          # TPT compiled, batch 1
    meta_memory_gib={"10": 8.0, "200": 12.0},             # MetaTPT 2nd order compiled, batch 1
    meta_vs_tpt={"10": 5.0},                              # MetaTPT / TPT time per sample
    meta_ceiling={"10": 0.6},                             # MetaTPT FLOP/s / matmul ceiling
    compile_only_memory_gib={"ViT-L/14": 32.0},           # at num_classes[0]
)


def _base():
  c = ml_collections.ConfigDict()
  c.arch = "ViT-B/16"
  c.n_views = 64
  c.n_ctx = 4
  # The prompt backbone (`defaults.prompt_config`; the :maple3 / :maple9 / :mmrl variants).
  c.prompt = defaults.prompt_config(n_ctx=c.n_ctx)
  # ImageNet's first 10 names, ImageNet-R's 200, ImageNet's 1000 (real prompt lengths).
  c.num_classes = (10, 200, 1000)
  c.batch_sizes = (1, 2, 4)
  c.compute_dtype = "float32"   # "bfloat16": bf16 matmuls, fp32 norms, softmax and losses
  c.remat = False
  c.class_chunk = 0             # text tower over this many classes at a time (0: all at once)
  chunked = dict(view_chunk=VIEW_CHUNK)
  c.methods = dict(
      zero_shot=defaults.method_config("zero_shot"),
      tpt=defaults.tpt_method(n_views=c.n_views),
      metatpt_first=defaults.metatpt_method(n_views=c.n_views, order="first", **chunked),
      metatpt_second=defaults.metatpt_method(n_views=c.n_views, order="second", **chunked),
      # All views' inner gradient at once: the memory the chunks save.
      metatpt_second_unchunked=defaults.metatpt_method(n_views=c.n_views, order="second"),
  )
  c.repeats = 2                  # timed calls per cell (median reported)
  c.warmup = True                # one untimed call (and one untimed PyTorch image) first
  c.torch_reference = True       # TPT as the public one-image PyTorch loop, same weights
  c.torch_samples = 2            # timed images (after one warm-up image)
  c.torch_threads = 0            # 0: PyTorch's default (all cores)
  c.torch_max_classes = 0        # PyTorch loop only up to this many classes (0: every count)
  c.matmul_size = 4096           # the ceiling: one [n, n] x [n, n] fp32 product
  c.memory_limit_gib = 20.0      # skip cells whose compiled program needs more
  c.max_seconds_per_cell = 900.0
  # Compile-only cells (memory and FLOPs per sample, nothing run): the scaling note's figures.
  c.compile_only_archs = ()
  c.compile_only_methods = ("tpt", "metatpt_second")
  c.compile_only_policies = (("float32", False), ("float32", True), ("bfloat16", True))
  # (TPT, MetaTPT 2nd order) rows compared by the time-ratio and FLOP/s targets.
  c.meta_target_pair = ("tpt", "metatpt_second")
  c.targets = dict(TARGETS)
  # Restrict the methods run at some class counts (default: every method at every count).
  c.methods_at = {}
  # XLA flags set before JAX starts (the CLI only; e.g. XNNPACK fusion on CPU, see
  # docs/THROUGHPUT.md). An XLA_FLAGS already in the environment wins.
  c.xla_flags = ""
  c.seed = 0
  c.output_dir = "runs/throughput"
  return c


def _cpu(c):
  """What 2 CPU cores can measure in ~25 minutes (docs/THROUGHPUT.md)."""
  c.batch_sizes = (1,)
  c.repeats = 1
  c.torch_samples = 1
  # No untimed first call: each cell is one timed call (page faults and allocator warm-up
  # are ~1 s against 20-150 s per call here), so the run fits ~25 minutes.
  c.warmup = False
  # Unchunked second order is compiled by the :scaling run; first order is left out for time.
  del c.methods["metatpt_second_unchunked"], c.methods["metatpt_first"]
  c.methods_at = {200: ("zero_shot", "tpt", "metatpt_second"), 1000: ("zero_shot", "tpt")}
  # The PyTorch loop keeps every layer's activations of 1000 77-token prompts for the backward
  # (~2 GiB a layer, 12 layers): at 1000 classes the kernel killed it at 24.3 GB resident on
  # this 24 GiB machine (docs/THROUGHPUT.md). It runs at 10 and 200 classes.
  c.torch_max_classes = 200
  c.output_dir = "runs/throughput_cpu"


def _tiny(c):
  """Seconds: the tiny CLIP, 8 views (the tests' size)."""
  c.arch = "tiny"
  c.n_views = 8
  c.num_classes = (3, 5)
  c.batch_sizes = (1, 2)
  for name, m in c.methods.items():
    if name != "zero_shot":
      m.n_views = 8
      m.selection_ratio = 0.25
      if m.get("view_chunk"):
        m.view_chunk = 3
  c.torch_samples = 1
  c.matmul_size = 512
  c.compile_only_archs = ("tiny",)
  c.compile_only_policies = (("float32", False), ("float32", True))
  c.targets = dict(tpt_vs_torch={"3": 1.0}, tpt_memory_gib={"3": 1.0},
                   meta_memory_gib={"3": 1.0}, meta_vs_tpt={"3": 5.0}, meta_ceiling={"3": 0.6},
                   compile_only_memory_gib={"tiny": 1.0})
  c.output_dir = "runs/throughput_tiny"


def _scaling(c):
  """Compile only: memory per sample at B/16 and L/14 (minutes, no runs)."""
  c.num_classes = (200,)
  c.batch_sizes = ()
  c.torch_reference = False
  c.compile_only_archs = ("ViT-B/16", "ViT-L/14")
  c.compile_only_methods = ("tpt", "metatpt_second", "metatpt_second_unchunked")
  c.output_dir = "runs/throughput_scaling"


def _baselines(c):
  """The field's baselines beside TPT and zero-shot (minutes on 2 CPU cores)."""
  c.num_classes = (10, 200)
  c.batch_sizes = (1,)
  c.repeats = 1
  c.warmup = False
  c.torch_reference = False
  c.methods = dict(zero_shot=c.methods.zero_shot, tpt=c.methods.tpt,
                   **defaults.baselines(zero=dict(n_views=c.n_views),
                                        mta=dict(n_views=c.n_views)))
  c.targets = {}
  c.output_dir = "runs/throughput_baselines"


def _accelerator(c):
  """Real scale on one GPU / TPU chip (tools/device_throughput.sh): B/16, 64 views, 200 and 1,000
  classes, TPT and MetaTPT second order, batches up to 32. The PyTorch loop is left out: the
  pinned torch is a CPU build, so it could not run on the same card."""
  c.num_classes = (200, 1000)
  c.batch_sizes = (1, 8, 32)
  c.methods = dict(tpt=c.methods.tpt, metatpt_second=c.methods.metatpt_second)
  c.torch_reference = False
  c.memory_limit_gib = 70.0
  c.max_seconds_per_cell = 240.0
  c.targets = dict(meta_vs_tpt={"200": 5.0})
  c.output_dir = "runs/throughput_accelerator"


def _backbone(c, name, **fields):
  """TPT and MetaTPT (second order) on a prompt backbone with random prompt tensors: B/16, 64
  views, 200 classes, one sample per step, one timed call each (2 CPU cores: minutes a cell).
  :clip is plain CLIP at the same size, to run beside them on the same machine."""
  c.num_classes = (200,)
  c.batch_sizes = (1,)
  c.repeats = 1
  c.warmup = False
  c.torch_reference = False
  c.methods = dict(zero_shot=c.methods.zero_shot, tpt=c.methods.tpt,
                   metatpt_second=c.methods.metatpt_second)
  if name:
    c.prompt.backbone = name
    c.prompt[name].update(fields)
  c.targets = {}
  c.output_dir = f"runs/throughput_{name or 'clip'}{fields.get('depth', '')}"


VARIANTS = {"": lambda c: None, "cpu": _cpu, "tiny": _tiny, "scaling": _scaling,
            "baselines": _baselines, "accelerator": _accelerator,
            "clip": lambda c: _backbone(c, ""),
            "maple3": lambda c: _backbone(c, "maple", depth=3),
            "maple9": lambda c: _backbone(c, "maple", depth=9),
            "mmrl": lambda c: _backbone(c, "mmrl")}


def get_config(arg: str = ""):
  if arg not in VARIANTS:
    raise ValueError(f"Unknown variant {arg!r}; valid: {', '.join(map(repr, VARIANTS))}.")
  c = _base()
  VARIANTS[arg](c)
  return c

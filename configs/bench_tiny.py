"""Seconds-long benchmark for smoke tests; set model.checkpoint and data.domains on the command line.

    metatpt-bench --config configs/bench_tiny.py --config.model.checkpoint=/tmp/tiny_clip
    metatpt-bench --config configs/bench_tiny.py:quick ...   # zero-shot, TPT, MetaTPT only
    metatpt-bench --config configs/bench_tiny.py:tpt ...     # zero-shot and TPT only
    metatpt-bench --config configs/bench_tiny.py:tda ...     # zero-shot and TDA (online)
"""
from metatpt_jax.bench import defaults


def get_config(arg: str = ""):
  c = defaults.base_config()
  c.model.checkpoint = ""
  c.data.domains = ("fashion_mnist:clean",)
  c.data.num_images = 6
  c.data.cache_dir = ""
  c.seeds = (0,)
  c.batch_size = 4
  small = dict(n_views=8, selection_ratio=0.25)
  c.methods = defaults.all_methods(
      metatpt=dict(offline_images=4, generator=dict(defaults.metatpt_method().generator,
                                                    hidden=8), **small), tpt=small)
  if arg in ("quick", "tpt"):
    keep = ("zero_shot", "tpt", "metatpt") if arg == "quick" else ("zero_shot", "tpt")
    c.methods = {k: c.methods[k] for k in keep}
  elif arg == "tda":  # the online method: one stream, state saved after every batch
    c.methods = {"zero_shot": c.methods.zero_shot, "tda": defaults.method_config("tda")}
  elif arg:
    raise ValueError(f"Unknown variant {arg!r}; valid: '', 'quick', 'tpt' or 'tda'.")
  c.output_dir = "runs/bench_tiny"
  c.progress_bar = False
  return c

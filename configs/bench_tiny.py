"""Seconds-long benchmark for smoke tests: point model.checkpoint at a tiny checkpoint."""
from metatpt_jax.bench import defaults


def get_config():
  c = defaults.base_config()
  c.model.checkpoint = ""  # set on the command line
  c.data.domains = ["fashion_mnist:clean"]
  c.data.num_images = 6
  c.data.cache_dir = ""
  c.seeds = [0]
  c.batch_size = 4
  c.methods = defaults.all_methods(n_views=8, selection_ratio=0.25, offline_images=4,
                                   generator=dict(defaults.metatpt_method().generator, hidden=8))
  c.methods.tpt.n_views = 8
  c.methods.tpt.selection_ratio = 0.25
  c.output_dir = "runs/bench_tiny"
  c.progress_bar = False
  return c

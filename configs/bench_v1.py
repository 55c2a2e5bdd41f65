"""The offline world v1 (the first): checkpoints/small_clip on shifted Fashion-/Animal-MNIST
domains (docs/OFFLINE_V1.md). The current benchmark is world v2's (configs/bench_v2.py).

    metatpt-bench --config configs/bench_v1.py
    metatpt-bench --config configs/bench_v1.py:demo     # fewer images, 1 seed
"""
from metatpt_jax.bench import defaults


def get_config(arg: str = ""):
  c = defaults.base_config()
  # Shifted test domains where the small CLIP's zero-shot accuracy lands at 40-70% (measured on
  # 300 test images: noise 50, defocus 46, elastic 58, motion 59, affine 53 and 60); clean
  # accuracy (85 / 91) is in checkpoints/small_clip/metadata.json.
  c.data.domains = (
      "fashion_mnist:gaussian_noise:5",
      "fashion_mnist:defocus_blur:3",
      "fashion_mnist:elastic_transform:3",
      "fashion_mnist:motion_blur:3",
      "fashion_mnist:affine:3",
      "animal_mnist:affine:3",
  )
  c.output_dir = "runs/bench_small"
  if arg == "demo":
    c.data.num_images = 100
    c.seeds = (0,)
    c.output_dir = "runs/demo"
  elif arg:
    raise ValueError(f"Unknown variant {arg!r}; valid: '' or 'demo'.")
  return c

"""Method configs with TPT's published defaults, for configs/*.py to compose.

Every field is a field of tpt.TPTSpec / metatpt.MetaTPTSpec (validated when the run starts).
"""
from __future__ import annotations

import ml_collections

from metatpt_jax import generator as gen
from metatpt_jax import metatpt, tpt


def tpt_method(**overrides) -> ml_collections.ConfigDict:
  """TPT exactly as its public implementation: 64 views, 10% kept, 1 AdamW step at 5e-3."""
  c = ml_collections.ConfigDict(dict(kind="tpt", **tpt.TPTSpec()._asdict()))
  c.update(overrides)
  return c


def metatpt_method(**overrides) -> ml_collections.ConfigDict:
  """MetaTPT as docs/METHOD.md describes it (learned views, dual loop, second order)."""
  fields = metatpt.MetaTPTSpec()._asdict()
  fields["generator"] = ml_collections.ConfigDict(gen.GeneratorSpec()._asdict())
  c = ml_collections.ConfigDict(dict(kind="metatpt", offline_images=64, **fields))
  c.update(overrides)
  return c


def all_methods(**metatpt_overrides) -> ml_collections.ConfigDict:
  """zero-shot, TPT, MetaTPT and each ablation in docs/METHOD.md."""
  m = lambda **kw: metatpt_method(**{**metatpt_overrides, **kw})
  return ml_collections.ConfigDict({
      "zero_shot": dict(kind="zero_shot"),
      "tpt": tpt_method(),
      "metatpt": m(),
      "metatpt_first_order": m(order="first"),
      "metatpt_joint": m(schedule="joint"),
      "metatpt_fixed_aug": m(augment="fixed"),
      "metatpt_offline": m(augment="frozen"),
  })


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # class_chunk: the text tower over this many classes at a time (0: all; bounds memory at 1000)
  c.model = dict(checkpoint="checkpoints/small_clip", compute_dtype="float32", remat=False,
                 class_chunk=0)
  c.prompt = dict(n_ctx=4, init="a photo of a")
  # canvas_size: paper datasets keep each decoded image (aspect kept, longer side at most this
  # many pixels) for TPT's random crops, as the public code crops the full image; 0 crops from
  # the centre square. The in-memory shifted domains are square: their crops need no canvas.
  c.data = dict(domains=("fashion_mnist:clean",), num_images=500, split="test",
                cache_dir="runs/domain_cache", canvas_size=512)
  c.seeds = (0, 1, 2)  # tuples: overridable as --config.seeds="(0,)"
  c.batch_size = 8  # per step, rounded up to a multiple of the device count
  c.num_devices = 0  # 0: every local device; n: the first n
  c.methods = all_methods()
  c.output_dir = "runs/bench"
  c.progress_bar = True
  c.plot_views = True
  return c

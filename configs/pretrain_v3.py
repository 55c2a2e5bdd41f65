"""Pretraining v3 of the small CLIP: emoji artwork by four source artists (world v3).

    metatpt-pretrain --config configs/pretrain_v3.py               # runs/pretrain_v3 (resumable)
    metatpt-pretrain --config configs/pretrain_v3.py:tiny --config.workdir=/tmp/tiny_v3

`make artwork` (or the first run) fetches and renders the styles. What carries over from v2, and
why: CLIP's temperature (the logit scale starts at, and is clamped to, 100), one caption per
image that names how the image looks (`pretrain.artwork.DESCRIBED`: plain, black and white,
silhouette, outline, small), and a multi-positive target over identical captions. New: the
picture at a random scale and place over a random background, so neither carries the class.
The recipe is a first candidate: it is to be chosen on the held-out styles' development split
(metadata.json reports zero-shot there), never on their test split.
"""
import math

import ml_collections

from metatpt_jax.data.artwork import world
from metatpt_jax.pretrain import artwork, augment


def get_config(arg: str = ""):
  c = ml_collections.ConfigDict()
  c.arch = "small_v3"
  c.seed = 0
  c.workdir = "runs/pretrain_v3"
  c.data_dir = ""
  c.data_kind = "artwork"
  c.sources = world.SOURCE_STYLES
  c.source_weights = (1.0,) * len(world.SOURCE_STYLES)
  c.max_train_images_per_source = 0
  c.batch_size = 256
  c.total_steps = 4000  # about 1.0 s a step on 2 cores: about 70 minutes
  c.stop_at = 0
  c.lr = 1e-3
  c.warmup_steps = 200
  c.final_lr_fraction = 0.0
  c.weight_decay = 0.1
  c.grad_clip = 1.0
  c.captions = "described"
  c.described_probs = (0.4, 0.15, 0.15, 0.15, 0.15)  # plain, then each named look
  c.contrastive_target = "class_any"
  c.captions_per_class = 0
  c.logit_scale_init = math.log(100.0)
  c.logit_scale_max = math.log(100.0)
  c.augment = augment.default_config()  # (the image sets' augmentation; unused here)
  c.compose = artwork.compose_config()
  c.log_every = 20
  c.checkpoint_every = 100
  c.eval_images = 0
  c.progress_bar = True
  if arg == "tiny":
    c.arch = "tiny"
    c.workdir = "runs/pretrain_v3_tiny"
    c.max_train_images_per_source = 50
    c.batch_size = 8
    c.total_steps = 2
    c.warmup_steps = 1
    c.log_every = 1
    c.checkpoint_every = 1
    c.eval_images = 20
  elif arg:
    raise ValueError(f"Unknown config variant {arg!r}; valid: '' (default), 'tiny'.")
  return c

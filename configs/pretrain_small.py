"""Pretraining the "small" CLIP on Fashion-MNIST + Animal-MNIST train splits.

    python -m metatpt_jax.pretrain.cli --config configs/pretrain_small.py
    python -m metatpt_jax.pretrain.cli --config configs/pretrain_small.py:tiny \
        --config.workdir=/tmp/tiny   # the smoke-test size
"""
import math

import ml_collections

from metatpt_jax.pretrain import augment


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """`arg`: "" for the real run, "tiny" for a seconds-long smoke test."""
  c = ml_collections.ConfigDict()
  c.arch = "small"
  c.seed = 0
  c.workdir = "runs/pretrain_small"
  c.data_dir = ""  # "" = $METATPT_DATA_DIR or ~/tensorflow_datasets
  c.sources = ("fashion_mnist", "animal_mnist")
  # Animal-MNIST has 8k train images to Fashion-MNIST's 60k: give it a third of each batch.
  c.source_weights = (2.0, 1.0)
  c.max_train_images_per_source = 0  # 0 = all
  c.batch_size = 256
  c.total_steps = 1600
  c.stop_at = 0  # > 0: checkpoint and exit at this step (resume by rerunning without it)
  c.lr = 1e-3
  c.warmup_steps = 80
  c.final_lr_fraction = 0.0
  c.weight_decay = 0.1
  c.grad_clip = 1.0
  # Captions of the image's class all count as matches, with a uniform target over them
  # (step.contrastive_loss). This recipe made checkpoints/small_clip (its metadata.json calls
  # the same setting class_aware=True); "class_any" lets the temperature sharpen further.
  c.contrastive_target = "class_uniform"
  c.captions_per_class = 3  # class-balanced caption set per batch; 0 = one per image
  c.logit_scale_init = math.log(1 / 0.07)
  c.logit_scale_max = math.log(100.0)
  c.augment = augment.default_config()
  c.log_every = 20
  c.checkpoint_every = 100
  c.eval_images = 0  # test images per source for the final zero-shot score; 0 = all
  c.progress_bar = True
  c.export_dtype = "float32"  # of model.safetensors; "float16" halves it (loading casts back)
  if arg == "tiny":
    c.arch = "tiny"
    c.workdir = "runs/pretrain_tiny"
    c.max_train_images_per_source = 200
    c.batch_size = 16
    c.total_steps = 4
    c.warmup_steps = 1
    c.log_every = 2
    c.checkpoint_every = 2
    c.eval_images = 50
  elif arg:
    raise ValueError(f"Unknown config variant {arg!r}; valid: '' (default), 'tiny'.")
  return c

"""The pretraining run: data, resumable loop, final export with metadata and zero-shot scores.

    from metatpt_jax.pretrain import train
    metadata = train.run(config)  # config from configs/pretrain_small.py

Layout of `config.workdir`: `train_state/` (periodic checkpoints; a rerun with the same
workdir resumes from it), `log.txt`, and at the end `config.json` + `model.safetensors`
(Hugging Face format, `checkpoint.load_clip` reads it) + `metadata.json`.
"""
from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
import numpy as np
import tqdm

from metatpt_jax.clip import checkpoint
from metatpt_jax.clip.config import PRESETS, get_arch
from metatpt_jax.clip.tokenizer import Tokenizer
from metatpt_jax.data import domains
from metatpt_jax.errors import UserError
from metatpt_jax.pretrain import artwork, captions, evaluate, pairs, state_io, step

STATE_DIR = "train_state"


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise UserError(message)


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Rejects a malformed config before any data is read or step compiled, naming the field and
  the fix (`metatpt-pretrain` prints the UserError as one line)."""
  _require(config.arch in PRESETS, f"--config.arch={config.arch!r}: unknown architecture; "
           f"give one of {sorted(PRESETS)}.")
  for field in ("batch_size", "total_steps", "log_every", "checkpoint_every"):
    _require(_is_int(config[field]) and config[field] >= 1,
             f"--config.{field}={config[field]!r}: give a positive integer.")
  for field in ("stop_at", "max_train_images_per_source", "eval_images", "captions_per_class"):
    _require(_is_int(config[field]) and config[field] >= 0,
             f"--config.{field}={config[field]!r}: give 0 or a positive integer.")
  sources, weights = tuple(config.sources), tuple(config.source_weights)
  _require(len(sources) > 0 and all(isinstance(s, str) and s for s in sources),
           f"--config.sources={sources!r}: give a tuple of source names, e.g. "
           "--config.sources=\"('fashion_mnist',)\".")
  _require(len(weights) == len(sources)
           and all(isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0
                   for w in weights),
           f"--config.source_weights={weights!r}: give one positive weight per source "
           f"({len(sources)} sources).")
  _require(config.contrastive_target in step.TARGETS,
           f"--config.contrastive_target={config.contrastive_target!r}: give one of "
           f"{list(step.TARGETS)}.")
  _require(config.export_dtype in ("float32", "float16"),
           f"--config.export_dtype={config.export_dtype!r}: give 'float32' or 'float16'.")
  if "compose" in config and artwork.uses_collage(config.compose):
    _require(config.batch_size >= 5, f"--config.batch_size={config.batch_size}: collage "
             "backgrounds take four other pictures of the batch; give at least 5.")
  _require(isinstance(config.workdir, str) and bool(config.workdir),
           "--config.workdir is empty: give a directory for checkpoints and the export.")
  _check_captions(config)


def _check_captions(config) -> None:
  """The caption mode, the caption count and the contrastive target must agree."""
  if _described(config):
    _require(not config.captions_per_class and config.contrastive_target != "paired",
             "captions='described' needs --config.captions_per_class=0 (one caption per image) "
             "and a class target ('class_any' or 'class_uniform') over identical captions.")
    _require(len(config.described_probs) == len(_templates(config)),
             f"--config.described_probs has {len(config.described_probs)} entries; give one "
             f"per described template ({len(_templates(config))}).")
  else:
    _require((config.contrastive_target == "paired") == (config.captions_per_class == 0),
             "--config.contrastive_target='paired' needs --config.captions_per_class=0 (one "
             "caption per image), and the class targets need captions_per_class > 0.")


def _make_workdir(workdir: str) -> None:
  """Creates `workdir` and checks it is writable now, not at the first checkpoint."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as err:
    raise UserError(f"--config.workdir={workdir!r}: cannot create it ({err.strerror}); give a "
                    "writable directory.") from err
  _require(os.access(workdir, os.W_OK),
           f"--config.workdir={workdir!r} is not writable; give a writable directory.")


def _log(workdir: str, record: dict) -> None:
  with open(os.path.join(workdir, "log.txt"), "a") as f:
    f.write(json.dumps(record) + "\n")


def _templates(config) -> tuple:
  if _is_artwork(config):
    return artwork.DESCRIBED_TEMPLATES
  return captions.DESCRIBED_TEMPLATES if _described(config) else captions.TEMPLATES


def _is_artwork(config) -> bool:
  """Pretraining v3: `sources` are styles of emoji artwork (`data.artwork.styles`)."""
  return config.get("data_kind", "images") == "artwork"


def _described(config) -> bool:
  return config.get("captions", "templates") == "described"


def _load_data(config, arch, tokenizer) -> pairs.PairData:
  make_captions = lambda names: captions.caption_table(
      names, _templates(config), tokenizer, arch.text.context_length)
  if _is_artwork(config):
    return artwork.load_artwork_pairs(tuple(config.sources), tuple(config.source_weights),
                                      arch.vision.image_size, make_captions,
                                      max_per_style=config.max_train_images_per_source,
                                      seed=config.seed)
  return pairs.load_pairs(tuple(config.sources), tuple(config.source_weights),
                          arch.vision.image_size, make_captions, config.data_dir or None,
                          config.max_train_images_per_source or None, config.seed)


def _start_state(config, arch, tx, state_dir):
  """Fresh state, or the last checkpoint in `state_dir` (then also its bookkeeping)."""
  state = step.init_state(jax.random.key(config.seed), arch, config, tx)
  if not state_io.has_state(state_dir):
    return state, dict(step=0, wall_time_s=0.0)
  return state_io.restore_state(state_dir, state)


def _train_loop(config, arch, data, workdir) -> tuple[step.TrainState, dict, dict]:
  tx = step.make_optimizer(config)
  state_dir = os.path.join(workdir, STATE_DIR)
  state, info = _start_state(config, arch, tx, state_dir)
  train_step = step.jit_train_step(arch, tx, config)
  base_key = jax.random.key(config.seed + 1)
  metrics, begin, wall_before = {}, time.time(), info["wall_time_s"]
  last = min(config.stop_at or config.total_steps, config.total_steps)
  bar = tqdm.trange(info["step"], last, initial=info["step"],
                    total=config.total_steps, desc="pretrain", disable=not config.progress_bar)
  for i in bar:
    batch = pairs.sample_batch(data, config.seed, i, config.batch_size,
                               config.captions_per_class,
                               tuple(config.described_probs) if _described(config) else None)
    state, metrics = train_step(state, batch, jax.random.fold_in(base_key, i))
    done = i + 1
    info = dict(step=done, wall_time_s=wall_before + time.time() - begin)
    if done % config.log_every == 0 or done == last:
      metrics = {k: float(v) for k, v in metrics.items()}
      bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['accuracy']:.3f}",
                      scale=f"{metrics['logit_scale']:.1f}")
      _log(workdir, dict(info, **metrics))
    if done % config.checkpoint_every == 0 or done == last:
      state_io.save_state(state_dir, state, info)
  return state, info, {k: float(v) for k, v in metrics.items()}


def zero_shot_report(params, arch, config, tokenizer) -> dict:
  """Clean zero-shot top-1 (%) on the TEST split of every source, own class names each
  (artwork: on every held-out style's development split, over all classes)."""
  if _is_artwork(config):
    return _artwork_zero_shot(params, arch, config, tokenizer)
  report = {}
  for name in config.sources:
    domain = domains.load_domain(f"{name}:clean", split="test",
                                 num_images=config.eval_images or None, seed=config.seed,
                                 image_size=arch.vision.image_size,
                                 data_dir=config.data_dir or None)
    report[name] = dict(
        accuracy=evaluate.zero_shot_accuracy(params, arch, domain.images, domain.labels,
                                             domain.class_names, captions.EVAL_TEMPLATES,
                                             tokenizer),
        num_images=len(domain.labels))
  return report


def _artwork_zero_shot(params, arch, config, tokenizer) -> dict:
  from metatpt_jax.data.artwork import world
  report = {}
  for style in world.HELD_OUT_STYLES:
    domain = domains.load_domain(f"artwork:{style}", split="dev", image_size=arch.vision.image_size,
                                 num_images=config.eval_images or None, seed=config.seed)
    accuracy = None if not len(domain.labels) else evaluate.zero_shot_accuracy(
        params, arch, domain.images, domain.labels, domain.class_names, artwork.EVAL_TEMPLATES,
        tokenizer)
    report[f"{style} (dev)"] = dict(accuracy=accuracy, num_images=len(domain.labels))
  report.update(source_zero_shot(params, arch, config.sources, tokenizer))
  return report


def source_zero_shot(params, arch, sources, tokenizer, cache_dir=None) -> dict:
  """Zero-shot on each source style's own pictures (plain, white background, every universe
  class). These are the pictures pretraining saw (under augmentation): a fit figure, not a
  generalisation one, hence the '(train pictures)' label."""
  from metatpt_jax.data.artwork import styles, world
  universe = world.class_universe(cache_dir, arch.vision.image_size)
  catalog = styles.load_catalog(cache_dir)
  names = [catalog.classes[k].name for k in universe]
  label_of = {k: i for i, k in enumerate(universe)}
  report = {}
  for style in sources:
    s = styles.load_style(style, arch.vision.image_size, cache_dir=cache_dir, catalog=catalog)
    keep = [i for i, k in enumerate(s.keys) if k in label_of]
    labels = np.array([label_of[s.keys[i]] for i in keep], np.int32)
    report[f"{style} (train pictures)"] = dict(
        accuracy=evaluate.zero_shot_accuracy(params, arch, s.images[keep], labels, names,
                                             artwork.EVAL_TEMPLATES, tokenizer),
        num_images=len(keep))
  return report


def run(config: ml_collections.ConfigDict, command: str = "") -> dict:
  """Trains (or resumes) and exports; returns the metadata written to metadata.json.

  With `config.stop_at` below `total_steps` it stops there after a checkpoint, exports
  nothing and returns {"steps", "finished": False}; rerun without it to finish. Raises
  UserError for a malformed config or a workdir that cannot be written or holds another run's
  checkpoint.
  """
  validate_config(config)
  arch = get_arch(config.arch)
  workdir = config.workdir
  _make_workdir(workdir)
  tokenizer = Tokenizer()
  data = _load_data(config, arch, tokenizer)
  state, info, metrics = _train_loop(config, arch, data, workdir)
  if info["step"] < config.total_steps:  # stopped early on purpose (config.stop_at)
    return dict(steps=info["step"], finished=False)
  params = jax.device_get(state.params)
  checkpoint.save_hf(params, arch, workdir, config.export_dtype)
  metadata = dict(
      finished=True, command=command, seed=config.seed, arch=config.arch, steps=info["step"],
      batch_size=config.batch_size, wall_time_s=round(info["wall_time_s"], 1),
      data=dict(sources=list(config.sources), source_weights=list(config.source_weights),
                split="train", num_images=int(len(data.labels)), class_names=data.class_names,
                templates=list(_templates(config))),
      final_metrics=metrics,
      zero_shot_test=zero_shot_report(params, arch, config, tokenizer),
      eval_templates=list(artwork.EVAL_TEMPLATES if _is_artwork(config)
                          else captions.EVAL_TEMPLATES),
      config=json.loads(config.to_json()),
      jax_version=jax.__version__, num_parameters=int(sum(
          np.size(x) for x in jax.tree_util.tree_leaves(params))))
  with open(os.path.join(workdir, "metadata.json"), "w") as f:
    json.dump(metadata, f, indent=2)
  return metadata

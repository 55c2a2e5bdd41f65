"""`metatpt-train-prompt --config configs/prompt_train.py:<backbone> [--config.field=value ...]`.

Trains a prompt backbone (CoOp, MaPLe, MMRL) on few-shot labelled images with CLIP frozen
(`backbones.train`), resumably: re-running the same command continues after the last finished
epoch. Writes <workdir>/prompt.npz, which `--config.prompt.backbone_checkpoint` of the benchmark
reads (CoOp's context: `--config.prompt.init`).

A bad config or data set ends the command with one line on stderr and exit status 2; `--debug`
shows the traceback instead.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys

from ml_collections import config_flags

from metatpt_jax import cli_util, errors

PROGRAM = "metatpt-train-prompt"
_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.",
                                          lock_config=True)
_EXAMPLE = "metatpt-train-prompt --config configs/prompt_train.py:maple [--config.<field>=...]"


def training_data(cfg, image_size: int):
  """The few-shot set: the artwork world's source styles ("artwork_sources") or an image
  folder of one sub-folder per class ("folder:<path>")."""
  from metatpt_jax.data import domains
  if cfg.data.source == "artwork_sources":
    from metatpt_jax.data.artwork import world
    return world.source_domain(cfg.data.split, image_size=image_size,
                               cache_dir=cfg.data.cache_dir or None,
                               num_classes=cfg.data.num_classes or None, shots=cfg.data.shots,
                               seed=cfg.seed)
  if cfg.data.source.startswith("folder:"):
    return domains.load_domain(f"{cfg.data.source}:clean", image_size=image_size,
                               seed=cfg.seed)
  raise errors.UserError(f"data.source {cfg.data.source!r}: give 'artwork_sources' or "
                         "'folder:<directory of class folders>'.")


def run(cfg) -> str:
  from metatpt_jax.backbones import train
  from metatpt_jax.bench import methods
  from metatpt_jax.clip import checkpoint
  params, arch = checkpoint.load_clip(cfg.model.checkpoint)
  backbone = methods.backbone_spec(cfg.prompt)
  if backbone is None:  # CoOp: the context alone, from prompt.n_ctx / prompt.init
    from metatpt_jax.backbones import CoOp
    backbone = CoOp(n_ctx=cfg.prompt.n_ctx, ctx_init=cfg.prompt.init or None)
  backbone.check(arch)
  domain = training_data(cfg, arch.vision.image_size)
  spec = train.TrainSpec(**{k: tuple(v) if isinstance(v, list) else v
                            for k, v in cfg.train.to_dict().items()})
  os.makedirs(cfg.workdir, exist_ok=True)
  with open(os.path.join(cfg.workdir, "config.json"), "w") as f:
    json.dump(dict(config=json.loads(cfg.to_json_best_effort()),
                   backbone=dataclasses.asdict(backbone), images=len(domain.labels),
                   classes=len(domain.class_names)), f, indent=1, default=str)
  train.train(backbone, params, arch, domain.images, domain.labels, domain.class_names, spec,
              cfg.workdir, seed=cfg.seed)
  return os.path.join(cfg.workdir, "prompt.npz")


def main(argv=None):
  argv = cli_util.pop_debug(list(sys.argv if argv is None else argv))
  cli_util.setup_logging(PROGRAM)
  with errors.report_user_errors(PROGRAM):
    cfg = cli_util.parse_config(argv, _CONFIG, _EXAMPLE)
    print(f"prompt written to {run(cfg)}")


if __name__ == "__main__":
  main()

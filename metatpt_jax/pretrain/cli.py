"""Command line: `python -m metatpt_jax.pretrain.cli --config configs/pretrain_small.py[:tiny]
[--config.key=value ...]` (console script `metatpt-pretrain`).

Rerunning the same command with the same `--config.workdir` resumes from its last checkpoint.
"""
from __future__ import annotations

import shlex
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (e.g. configs/pretrain_small.py or "
    "configs/pretrain_small.py:tiny); override fields with --config.key=value.",
    lock_config=True)
flags.mark_flag_as_required("config")


def _main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from metatpt_jax.pretrain import train
  command = shlex.join(["python", "-m", "metatpt_jax.pretrain.cli", *sys.argv[1:]])
  metadata = train.run(_CONFIG.value, command=command)
  if not metadata["finished"]:
    print(f"Stopped at step {metadata['steps']}; rerun without --config.stop_at to finish.")
    return
  scores = ", ".join(f"{k} {v['accuracy']:.1f}%" for k, v in metadata["zero_shot_test"].items())
  print(f"Wrote {_CONFIG.value.workdir}: {metadata['steps']} steps in "
        f"{metadata['wall_time_s']:.0f} s; clean zero-shot test accuracy: {scores}")


def main() -> None:
  """Console-script entry point."""
  app.run(_main)


if __name__ == "__main__":
  main()

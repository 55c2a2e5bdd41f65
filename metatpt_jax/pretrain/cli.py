"""Command line: `metatpt-pretrain --config configs/pretrain_small.py[:tiny]
[--config.key=value ...] [--debug]` (also `python -m metatpt_jax.pretrain.cli ...`).

Rerunning the same command with the same `--config.workdir` resumes from its last checkpoint.

Bad input (a config file or field, a workdir that cannot be written or holds another run's
checkpoint, a data source) ends the command with one line on stderr and exit status 2, as in
metatpt-bench; `--debug` (or METATPT_DEBUG=1) shows the traceback instead.
"""
from __future__ import annotations

import shlex
import sys

from ml_collections import config_flags

from metatpt_jax import cli_util, errors

PROGRAM = "metatpt-pretrain"
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (e.g. configs/pretrain_small.py or "
    "configs/pretrain_small.py:tiny); override fields with --config.key=value.",
    lock_config=True)
_EXAMPLE = ("metatpt-pretrain --config configs/pretrain_small.py[:tiny] "
            "[--config.<field>=<value> ...]")


def main(argv=None) -> None:
  """Console-script entry point."""
  argv = cli_util.pop_debug(list(sys.argv if argv is None else argv))
  cli_util.setup_logging(PROGRAM)
  with errors.report_user_errors(PROGRAM):
    config = cli_util.parse_config(argv, _CONFIG, _EXAMPLE)
    from metatpt_jax.pretrain import train
    command = shlex.join(["python", "-m", "metatpt_jax.pretrain.cli", *argv[1:]])
    metadata = train.run(config, command=command)
  if not metadata["finished"]:
    print(f"Stopped at step {metadata['steps']}; rerun without --config.stop_at to finish.")
    return
  scores = ", ".join(f"{k} {v['accuracy']:.1f}%" for k, v in metadata["zero_shot_test"].items())
  print(f"Wrote {config.workdir}: {metadata['steps']} steps in "
        f"{metadata['wall_time_s']:.0f} s; clean zero-shot accuracy: {scores}")


if __name__ == "__main__":
  main()

"""`metatpt-train-prompt --config configs/prompt_train.py:<backbone> [--config.field=value ...]`.

Trains a prompt backbone (CoOp, MaPLe, MMRL) on few-shot labelled images with CLIP frozen
(`backbones.train.run_config`), resumably: re-running the same command continues after the last finished
epoch. Writes <workdir>/prompt.npz, which `--config.prompt.backbone_checkpoint` of the benchmark
reads (CoOp's context: `--config.prompt.init`).

A bad config or data set ends the command with one line on stderr and exit status 2; `--debug`
shows the traceback instead.
"""
from __future__ import annotations

import sys

from ml_collections import config_flags

from metatpt_jax import cli_util, errors

PROGRAM = "metatpt-train-prompt"
_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.",
                                          lock_config=True)
_EXAMPLE = "metatpt-train-prompt --config configs/prompt_train.py:maple [--config.<field>=...]"


def main(argv=None):
  argv = cli_util.pop_debug(list(sys.argv if argv is None else argv))
  cli_util.setup_logging(PROGRAM)
  with errors.report_user_errors(PROGRAM):
    cfg = cli_util.parse_config(argv, _CONFIG, _EXAMPLE)
    from metatpt_jax.backbones import train
    print(f"prompt written to {train.run_config(cfg)}")


if __name__ == "__main__":
  main()

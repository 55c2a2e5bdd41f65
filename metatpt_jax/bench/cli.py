"""`metatpt-bench --config configs/<name>.py [--config.field=value ...] [--debug]`.

Runs zero-shot, TPT, MetaTPT and its ablations over the configured domains and seeds. Per-sample
results go to <output_dir>/samples*.jsonl as they are produced, keyed by a fingerprint of the
setting, so re-running the same command after an interruption resumes where it stopped and a
changed setting is computed afresh. At the end: results.json, results.md (printed),
accuracy.png, gain_vs_zero_shot.png and views_<method>.png.

Samples are spread over all local devices (`--config.num_devices` to use fewer). For several
hosts, start one process per host with JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID set (or METATPT_DISTRIBUTED=1 where `jax.distributed.initialize()` discovers
them); each process adapts its own share of the samples.

A bad config, domain, checkpoint or data set ends the command with one line on stderr and exit
status 2; `--debug` (or METATPT_DEBUG=1) shows the traceback instead.
"""
from __future__ import annotations

import sys

from ml_collections import config_flags

from metatpt_jax import cli_util, errors

PROGRAM = "metatpt-bench"
_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.",
                                          lock_config=True)
_EXAMPLE = "metatpt-bench --config configs/bench_v2.py:demo [--config.<field>=<value> ...]"


def main(argv=None):
  argv = cli_util.pop_debug(list(sys.argv if argv is None else argv))
  cli_util.setup_logging(PROGRAM)
  with errors.report_user_errors(PROGRAM):
    cfg = cli_util.parse_config(argv, _CONFIG, _EXAMPLE)
    from metatpt_jax import sharding
    sharding.maybe_initialize_distributed()
    from metatpt_jax.bench import runner
    text = runner.run(cfg)
  if text:
    print(text)


if __name__ == "__main__":
  main()

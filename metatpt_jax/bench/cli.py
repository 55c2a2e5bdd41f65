"""`metatpt-bench --config configs/<name>.py [--config.field=value ...]`.

Runs zero-shot, TPT, MetaTPT and its ablations over the configured domains and seeds. Per-sample
results go to <output_dir>/samples.jsonl as they are produced, so re-running the same command
after an interruption resumes where it stopped. At the end: results.json, results.md (printed),
accuracy.png and views_<method>.png.
"""
from __future__ import annotations

import sys

from absl import app
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.",
                                          lock_config=True)


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; use --config.<field>=<value>.")
  from metatpt_jax.bench import runner  # pylint: disable=g-import-not-at-top
  cfg = _CONFIG.value
  if cfg is None:
    raise app.UsageError("--config is required, e.g. --config configs/bench_small.py")
  print(runner.run(cfg))


def main(argv=None):
  app.run(_main, argv=argv if argv is not None else sys.argv)


if __name__ == "__main__":
  main()

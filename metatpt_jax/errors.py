"""Errors a person can fix, and how commands report them.

`UserError` marks bad input (a config field, a domain, a checkpoint, a data set, an image, a
method spec, a benchmark output directory): its message is one line saying what is wrong and how
to fix it. The commands (metatpt-bench, metatpt-pretrain, metatpt-export and
`python -m metatpt_jax.bench.summarize`) run inside `report_user_errors`, which prints a
UserError or an OSError (a missing or unwritable path) as one line on stderr and exits with
status 2; METATPT_DEBUG=1 (or `--debug` on metatpt-bench and metatpt-pretrain) shows the
traceback instead. Any other exception is a
bug and keeps its traceback. UserError subclasses ValueError, so library callers that catch
ValueError still do.
"""
from __future__ import annotations

import contextlib
import os
import sys

EXIT_USAGE = 2
DEBUG_ENV = "METATPT_DEBUG"


class UserError(ValueError):
  """Bad input; the message names the problem and the fix."""


def one_line(exc: BaseException) -> str:
  """The exception's message on a single line (newlines folded into '; ')."""
  text = str(exc).strip() or type(exc).__name__
  if isinstance(exc, KeyError) and exc.args:
    text = str(exc.args[0])
  return " ".join(part.strip() for part in text.splitlines() if part.strip())


def debug_enabled() -> bool:
  return os.environ.get(DEBUG_ENV, "") not in ("", "0")


@contextlib.contextmanager
def report_user_errors(program: str, kinds=(UserError, OSError)):
  """Inside the block, an exception of `kinds` ends the program: one line on stderr, exit 2."""
  try:
    yield
  except kinds as exc:
    if debug_enabled():
      raise
    print(f"{program}: error: {one_line(exc)}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USAGE)

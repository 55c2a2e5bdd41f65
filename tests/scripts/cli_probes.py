"""Runs `metatpt-bench` on many argument lists cheaply, for tests/test_cli_errors.py.

    python -m tests.scripts.cli_probes probes.json results.json

The heavy imports happen once; each probe runs in a forked child (JAX's backend is first
started there, never in this parent), with its stderr captured to a file. Writes
[{"rc": int, "stderr": str, "stdout": str}] in probe order.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile


def _probe(argv):
  from metatpt_jax.bench import cli
  with tempfile.TemporaryDirectory() as tmp:
    err_path, out_path = os.path.join(tmp, "err"), os.path.join(tmp, "out")
    pid = os.fork()
    if pid == 0:  # child
      code = 0
      try:
        with open(err_path, "w") as err, open(out_path, "w") as out:
          os.dup2(err.fileno(), 2)
          os.dup2(out.fileno(), 1)
          try:
            cli.main(["metatpt-bench", *argv])
          except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
          except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
          sys.stdout.flush()
          sys.stderr.flush()
      finally:
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    with open(err_path) as f:
      err = f.read()
    with open(out_path) as f:
      out = f.read()
  return dict(rc=os.waitstatus_to_exitcode(status), stderr=err, stdout=out)


def main():
  with open(sys.argv[1]) as f:
    probes = json.load(f)
  import metatpt_jax.bench.runner  # noqa: F401
  with open(sys.argv[2], "w") as f:
    json.dump([_probe(p) for p in probes], f)


if __name__ == "__main__":
  main()

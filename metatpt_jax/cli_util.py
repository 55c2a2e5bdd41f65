"""Shared command-line plumbing: `--config` flags without tracebacks, warnings as one line.

`parse_config` parses absl flags for an ml_collections `--config` file and turns every flag or
config-file problem (a missing file, an unknown variant, an unknown field, a value of the wrong
type) into a `UserError` whose message names the flag; `errors.report_user_errors` then prints
it as one line and exits with status 2.
"""
from __future__ import annotations

import logging
import os
import re
import sys

from absl import flags

from metatpt_jax import errors
from metatpt_jax.errors import UserError


def setup_logging(program: str) -> None:
  """The library's warnings (logger "metatpt_jax") as `<program>: warning: <message>` lines."""
  logger = logging.getLogger("metatpt_jax")
  if not any(getattr(h, "_metatpt", False) for h in logger.handlers):
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{program}: %(levelname)s: %(message)s"))
    handler._metatpt = True
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def pop_debug(argv: list[str]) -> list[str]:
  """Removes `--debug` (sets METATPT_DEBUG=1: tracebacks instead of one-line errors)."""
  if "--debug" in argv:
    os.environ[errors.DEBUG_ENV] = "1"
  return [a for a in argv if a != "--debug"]


def _flag_named(text: str, argv: list[str]) -> str:
  """The command-line argument a config error message is about, if one can be told."""
  for name in re.findall(r"'([A-Za-z_][\w.]*)'", text):
    for arg in argv[1:]:
      if arg.startswith("--config.") and name.split(".")[-1] in arg.split("=")[0].split("."):
        return arg.split("=")[0]
  return ""


def _config_error_text(err: BaseException) -> str:
  """The useful line of a flags/config error (the last line of an embedded traceback)."""
  text = str(err).strip()
  missing = re.search(r"No such file or directory: '([^']*)'", text)
  if missing:
    return f"config file {missing.group(1)} does not exist"
  if "Traceback" in text:
    text = text.splitlines()[-1].strip()
  return re.sub(r"^flag --config=\S*: ", "", errors.one_line(ValueError(text)))


def parse_config(argv: list[str], config_flag, example: str):
  """Parses `argv`; returns the config. Raises UserError for every flag or config problem."""
  sys.argv = list(argv)  # config_flags finds the `--config.*` overrides in sys.argv
  try:
    rest = flags.FLAGS(argv)
    value = config_flag.value
    if value is not None:
      value.keys()  # a config file that failed to load raises only when first used
  except flags.Error as err:
    raise UserError(f"{_config_error_text(err)} (usage: {example})") from err
  except (AttributeError, KeyError) as err:
    raw = err.args[0] if err.args and isinstance(err.args[0], str) else str(err)
    raw = raw.replace("\\n", "\n").replace("\\'", "'").strip("'\"")
    name, _, hint = raw.partition("\n")
    flag = _flag_named(f"'{name.strip(chr(39))}'", argv) or name
    hint = f" ({hint.strip()})" if hint.strip() else ""
    raise UserError(f"{flag}: no such config field{hint}; see the config file for the valid "
                    f"fields (usage: {example})") from err
  except (TypeError, ValueError, OSError) as err:
    raise UserError(f"{_config_error_text(err)} (usage: {example})") from err
  if len(rest) > 1:
    raise UserError(f"unexpected arguments {rest[1:]}; set fields with --config.<field>=<value> "
                    f"(usage: {example})")
  if value is None:
    raise UserError(f"--config is required (usage: {example})")
  return value


def sibling_config(config_file: str, name: str, arg: str = ""):
  """get_config(arg) of configs/<name>.py beside `config_file` (a config building on another;
  loaded by path, since configs/ is not a package)."""
  import importlib.util
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)

"""Fails when a Python file or function grows past the size limits; silent when clean.

Usage: python tools/check_shape.py  (from the repository root; exit 1 and one line per offence,
`path:line name N lines`, when any file under ROOTS is over MAX_FILE_LINES lines or any function
or method is over MAX_FUNCTION_LINES lines, from its `def` to its last line).
"""
from __future__ import annotations

import ast
import pathlib
import sys

MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 50
ROOTS = ("metatpt_jax", "configs", "tests", "tools")

# Deliberate exceptions, "path::name" -> why it may stay long. `name` is the dotted name of a
# function or method ("Class.method", "outer.inner"), or "<module>" for a whole file. Every entry
# needs a reason; remove an entry once its target is back under the limit.
ALLOWED: dict[str, str] = {}


def _functions(node: ast.AST, prefix: str = ""):
  """Yields (dotted name, node) for every function and method below `node`, nested ones too."""
  for child in ast.iter_child_nodes(node):
    if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      name = prefix + child.name
      if not isinstance(child, ast.ClassDef):
        yield name, child
      yield from _functions(child, name + ".")
    else:
      yield from _functions(child, prefix)


def offences(path: pathlib.Path) -> list[tuple[int, str, int]]:
  """(line, name, length) of each part of one file over its limit."""
  text = path.read_text(encoding="utf-8")
  found = []
  num_lines = len(text.splitlines())
  if num_lines > MAX_FILE_LINES:
    found.append((1, "<module>", num_lines))
  for name, fn in _functions(ast.parse(text, filename=str(path))):
    length = fn.end_lineno - fn.lineno + 1
    if length > MAX_FUNCTION_LINES:
      found.append((fn.lineno, name, length))
  return found


def main() -> int:
  failed = False
  for root in ROOTS:
    for path in sorted(pathlib.Path(root).rglob("*.py")):
      for line, name, length in offences(path):
        if f"{path.as_posix()}::{name}" not in ALLOWED:
          print(f"{path.as_posix()}:{line} {name} {length} lines")
          failed = True
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())

"""Loading the project's configs/*.py files as modules (they are files, not a package)."""
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_module(name: str):
  """The module configs/<name>.py, freshly executed."""
  spec = importlib.util.spec_from_file_location(f"{name}_config",
                                                os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module

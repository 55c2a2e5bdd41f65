"""Every notebook in notebooks/ runs top to bottom on tiny settings, and is stored stripped.

Each notebook runs in a fresh kernel (notebook 03 sets the CPU device count before JAX starts),
from the repository root so checkpoints/ paths resolve.
"""
import glob
import os
import time

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
# Per cell. A cell's longest work is one or two compilations of a second-order gradient, about
# 20 s each on a shared 2-core machine; 300 s leaves room for a slow CI host, not for a hang.
CELL_TIMEOUT_S = 300


def test_there_are_notebooks():
  assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_is_stripped(path):
  # Outputs in git bloat diffs and go stale; strip with nbformat (or `jupyter nbconvert
  # --clear-output --inplace`) before committing.
  nb = nbformat.read(path, as_version=4)
  dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
           and (c.get("outputs") or c.get("execution_count") is not None)]
  assert not dirty, f"{os.path.basename(path)}: cells {dirty} have outputs or execution counts"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_executes(path):
  nb = nbformat.read(path, as_version=4)
  start = time.perf_counter()
  NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                 resources={"metadata": {"path": ROOT}}).execute()  # raises on a failing cell
  print(f"{os.path.basename(path)} executed in {time.perf_counter() - start:.1f} s")
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  assert not errors

"""Where a benchmark's outputs live: a local or mounted directory, or an object store URL.

A plain path (local disk, NFS, a mounted bucket) is used through `os`, as before. A URL
(`gs://bucket/run`, `s3://...`) goes through etils' `epath` (installed with
tensorflow-datasets), which reaches Google Cloud Storage through TensorFlow's gfile where
TensorFlow is installed and through fsspec + gcsfs otherwise (`pip install 'metatpt-jax[gcs]'`).

Object stores cannot append to an object, so code that appends (the per-sample records) asks
`is_url` and writes one new object per batch instead; every other write here replaces a whole
file (a temporary file renamed into place locally; a single upload, whole or absent, on a store).
"""
from __future__ import annotations

import fnmatch
import io
import os

from metatpt_jax.errors import UserError

_GCS_HINT = ("install gcsfs (pip install 'metatpt-jax[gcs]') or TensorFlow, or mount the bucket "
             "(e.g. gcsfuse) and give the mounted path")


def is_url(path: str) -> bool:
  """True for an object store URL such as gs://bucket/dir (file:// counts as local)."""
  scheme, sep, _ = str(path).partition("://")
  return bool(sep) and scheme.isalnum() and scheme != "file"


def local(path: str) -> str:
  return str(path)[len("file://"):] if str(path).startswith("file://") else str(path)


SCHEMES = ("gs", "s3", "az")  # the object stores epath reaches (writable ones)


def _epath(path: str):
  scheme = str(path).partition("://")[0]
  if scheme not in SCHEMES:
    raise UserError(f"{path}: {scheme}:// is not an object store this can write to; give a "
                    f"local or mounted path, or a {', '.join(s + '://' for s in SCHEMES)} URL.")
  from etils import epath  # imported only for URLs: tfds brings it
  return epath.Path(path)


def _call(path: str, fn):
  """fn(epath.Path(path)), with a missing filesystem driver said in one line."""
  try:
    return fn(_epath(path))
  except ImportError as err:
    raise UserError(f"{path}: this object store needs a driver that is not installed ({err}); "
                    f"{_GCS_HINT}.") from None


def join(directory: str, *names: str) -> str:
  if is_url(directory):
    return "/".join([str(directory).rstrip("/"), *names])
  return os.path.join(local(directory), *names)


def exists(path: str) -> bool:
  return _call(path, lambda p: p.exists()) if is_url(path) else os.path.exists(local(path))


def isdir(path: str) -> bool:
  return _call(path, lambda p: p.is_dir()) if is_url(path) else os.path.isdir(local(path))


def makedirs(path: str) -> None:
  if is_url(path):
    _call(path, lambda p: p.mkdir(parents=True, exist_ok=True))
  else:
    os.makedirs(local(path), exist_ok=True)


def listdir(path: str) -> list[str]:
  """Names in the directory (empty when it does not exist)."""
  if not isdir(path):
    return []
  if is_url(path):
    return sorted(_call(path, lambda p: [c.name for c in p.iterdir()]))
  return sorted(os.listdir(local(path)))


def glob(directory: str, pattern: str) -> list[str]:
  """Paths of the directory's entries whose names match `pattern`, sorted."""
  return [join(directory, n) for n in listdir(directory) if fnmatch.fnmatch(n, pattern)]


def read_bytes(path: str) -> bytes:
  if is_url(path):
    return _call(path, lambda p: p.read_bytes())
  with open(local(path), "rb") as f:
    return f.read()


def write_bytes(path: str, data: bytes) -> None:
  """Replaces the file as a whole: a reader sees the old content or the new, never a part."""
  if is_url(path):  # an object store publishes an upload only when it is complete
    _call(path, lambda p: p.write_bytes(data))
    return
  tmp = local(path) + ".tmp"
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, local(path))


def remove(path: str) -> None:
  if is_url(path):
    _call(path, lambda p: p.unlink())
  else:
    os.remove(local(path))


def save_figure(fig, path: str, **kwargs) -> None:
  """matplotlib's savefig to a path or URL (the format from the name's extension)."""
  buf = io.BytesIO()
  fig.savefig(buf, format=os.path.splitext(path)[1][1:] or "png", **kwargs)
  write_bytes(path, buf.getvalue())

"""Pinned packages of the registries this project reaches (npm, Debian), fetched once and cached.

`fetch(package, cache_dir)` unpacks a package into `<cache_dir>/<name>-<version>/` and returns
that folder; a second call finds it there and downloads nothing. npm packages come from
`npm pack` (the tarball's `package/` folder); Debian packages from `apt-get download` and
`dpkg-deb -x` (no root needed). Nothing is fetched at import or by the tests, which build tiny
packages of each kind themselves.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tarfile
import tempfile
from typing import Literal, NamedTuple

from metatpt_jax.errors import UserError

CACHE_ENV = "METATPT_ARTWORK_DIR"


class Package(NamedTuple):
  """One package at one version, by its registry."""
  registry: Literal["npm", "debian"]
  name: str
  version: str

  @property
  def folder(self) -> str:
    return f"{self.name.replace('/', '+').lstrip('@')}-{self.version}"


def default_cache_dir() -> str:
  """$METATPT_ARTWORK_DIR, else ~/.cache/metatpt_jax/artwork (where this machine keeps it)."""
  return os.environ.get(CACHE_ENV, os.path.expanduser("~/.cache/metatpt_jax/artwork"))


def package_root(package: Package, cache_dir: str) -> str:
  """The folder the package's files are in once fetched (npm: the tarball's `package/`)."""
  root = os.path.join(cache_dir, package.folder)
  return os.path.join(root, "package") if package.registry == "npm" else root


def _run(cmd: list[str], cwd: str, what: str) -> None:
  if shutil.which(cmd[0]) is None:
    raise UserError(f"{what} needs `{cmd[0]}`, which is not installed; install it or put the "
                    f"unpacked package under {cwd}.")
  proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
  if proc.returncode != 0:
    last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
    raise UserError(f"{what} failed ({' '.join(cmd)}): {last}")


def _unpack_npm(package: Package, tmp: str, dest: str) -> None:
  _run(["npm", "pack", f"{package.name}@{package.version}", "--silent"], tmp,
       f"fetching npm package {package.name}@{package.version}")
  (tarball,) = glob.glob(os.path.join(tmp, "*.tgz"))
  with tarfile.open(tarball) as tar:
    tar.extractall(dest, filter="data")


def _unpack_debian(package: Package, tmp: str, dest: str) -> None:
  _run(["apt-get", "download", f"{package.name}={package.version}"], tmp,
       f"fetching Debian package {package.name}={package.version}")
  (deb,) = glob.glob(os.path.join(tmp, "*.deb"))
  _run(["dpkg-deb", "-x", deb, dest], tmp, f"unpacking {os.path.basename(deb)}")


def fetch(package: Package, cache_dir: str | None = None) -> str:
  """The unpacked package's root folder, fetched into the cache on first use."""
  cache_dir = cache_dir or default_cache_dir()
  root = package_root(package, cache_dir)
  if os.path.isdir(root):
    return root
  os.makedirs(cache_dir, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
    dest = os.path.join(tmp, "unpacked")
    unpack = _unpack_npm if package.registry == "npm" else _unpack_debian
    unpack(package, tmp, dest)
    # Renamed into place only when complete: a killed fetch leaves no half package behind.
    os.replace(dest, os.path.join(cache_dir, package.folder))
  return root

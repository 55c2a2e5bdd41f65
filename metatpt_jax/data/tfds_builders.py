"""TFDS builders for the packaged sets, stored as array_record (no TensorFlow needed).

`download_and_prepare` copies the package files into `data_dir` once (about 10 s for
Fashion-MNIST); after that `tfds.data_source` gives random access, and `load_packaged` reads a
whole split into memory in a second or two. Examples carry their original `index`, because tfds
shuffles records when it writes them: sorting by it restores the readers' order, which keeps
per-image corruption seeds stable.

    builder = get_builder("fashion_mnist")  # registered as "metatpt_fashion_mnist"
    builder.download_and_prepare()
    source = builder.as_data_source()["test"]  # source[i] -> {"image", "label", "index"}
    # once prepared, also: tfds.data_source("metatpt_fashion_mnist", split="test")
"""
from __future__ import annotations

import functools
import os

import numpy as np
import tensorflow_datasets as tfds

from metatpt_jax.data import sources
from metatpt_jax.errors import UserError

DATA_DIR_ENV = "METATPT_DATA_DIR"


def default_data_dir() -> str:
  """$METATPT_DATA_DIR if set, else ~/tensorflow_datasets (tfds' own default)."""
  return os.environ.get(DATA_DIR_ENV, os.path.expanduser("~/tensorflow_datasets"))


class _PackagedMnistLike(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base for 28x28 grey sets read by a `sources.read_*` function."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  CLASS_NAMES: tuple = ()
  DESCRIPTION = ""

  def __init__(self, **kwargs):
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _info(self):
    # A DatasetInfo built by hand: `dataset_info_from_configs` wants metadata files beside
    # the builder's code, which this package does not ship.
    return tfds.core.DatasetInfo(
        builder=self, description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict({
            # Raw uint8 tensors rather than encoded PNGs: decoding is then a reshape.
            "image": tfds.features.Tensor(shape=(28, 28), dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=list(self.CLASS_NAMES)),
            "index": tfds.features.Scalar(dtype=np.int64),
        }),
        supervised_keys=("image", "label"))

  def _read(self, split):
    raise NotImplementedError

  def _split_generators(self, dl_manager):
    del dl_manager  # the files ship in packages: nothing to download
    return {split: self._generate_examples(split) for split in sources.SPLITS}

  def _generate_examples(self, split):
    images, labels, _ = self._read(split)
    for i, (image, label) in enumerate(zip(images[..., 0], labels)):
      yield i, {"image": image, "label": int(label), "index": i}


class MetatptFashionMnist(_PackagedMnistLike):
  """Fashion-MNIST from Debian's `dataset-fashion-mnist` (60k train, 10k test)."""
  CLASS_NAMES = sources.FASHION_MNIST_CLASSES
  DESCRIPTION = "Fashion-MNIST (Zalando), from the Debian package dataset-fashion-mnist."

  def _read(self, split):
    return sources.read_fashion_mnist(split)


class MetatptAnimalMnist(_PackagedMnistLike):
  """Animal-MNIST silhouettes from PyPI `animal-mnist` 0.4, fixed 8k/2k split."""
  CLASS_NAMES = sources.ANIMAL_MNIST_CLASSES
  DESCRIPTION = "Animal-MNIST silhouettes (PyPI animal-mnist 0.4) with a fixed seeded split."

  def _read(self, split):
    return sources.read_animal_mnist(split)


BUILDERS = {"fashion_mnist": MetatptFashionMnist, "animal_mnist": MetatptAnimalMnist}


def get_builder(name: str, data_dir: str | None = None) -> tfds.core.GeneratorBasedBuilder:
  if name not in BUILDERS:
    raise UserError(f"Unknown packaged source {name!r}; valid names: {sorted(BUILDERS)}.")
  return BUILDERS[name](data_dir=data_dir or default_data_dir())


@functools.lru_cache(maxsize=8)
def load_packaged(name: str, split: str, data_dir: str | None = None):
  """A whole split of a packaged set, prepared into `data_dir` on first use.

  Returns:
    images [N, 28, 28, 3] uint8, labels [N] int32, class names (10). Arrays are read-only:
    they are shared by every caller through the cache.
  """
  sources.check_split(split)
  builder = get_builder(name, data_dir)
  if not builder.is_prepared():
    # Fail with the install command before tfds wraps the error in its own traceback.
    _check_installed(name)
    builder.download_and_prepare()
  source = builder.as_data_source()[split]
  records = source.__getitems__(list(range(len(source))))
  order = np.argsort([r["index"] for r in records])
  images = sources.grey_to_rgb(np.stack([records[i]["image"] for i in order]))
  labels = np.asarray([records[i]["label"] for i in order], np.int32)
  images.flags.writeable = labels.flags.writeable = False
  return images, labels, list(builder.CLASS_NAMES)


def _check_installed(name: str) -> None:
  if name == "fashion_mnist":
    path = os.path.join(sources.FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")
    if not os.path.exists(path):
      raise sources.MissingSourceError(
          f"Fashion-MNIST files not found ({path}). Install them with: "
          f"{sources.FASHION_MNIST_INSTALL}")
  else:
    sources.animal_mnist_files()

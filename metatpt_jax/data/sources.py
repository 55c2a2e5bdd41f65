"""Raw readers for the image sets that ship inside packages, and for image folders.

Every reader returns `(images uint8 [N, H, W, 3], labels int32 [N], class_names list[str])`.
The packaged sets are grey 28x28; they are returned as 3 identical channels, because CLIP's
image tower takes RGB.

- Fashion-MNIST: Debian's `dataset-fashion-mnist` (IDX gz files, 60k train + 10k test).
- Animal-MNIST: PyPI `animal-mnist` 0.4 (10k silhouettes in gzipped pickles, no official test
  split). We read the pickles with numpy and pickle alone (the package's own loader imports
  tensorflow) and make a fixed split: `ANIMAL_TEST_PER_CLASS` images per class go to test,
  chosen by `np.random.default_rng(ANIMAL_SPLIT_SEED)`. The set holds 284 exact duplicate
  images; duplicates are grouped by content hash and always land in the same split, so no test
  image also appears in train.
- Image folder: one sub-folder per class; with `train/` and `test/` sub-folders it has both
  splits, otherwise it is a test-only source.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import logging
import os
import pickle

import numpy as np

from metatpt_jax import errors
from metatpt_jax.errors import UserError

LOG = logging.getLogger("metatpt_jax")

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_INSTALL = "apt-get update && apt-get install -y dataset-fashion-mnist"
ANIMAL_MNIST_INSTALL = "pip install --no-deps animal-mnist==0.4"
# Natural CLIP-style names in label order 0..9 (the dataset's own names: "T-shirt/top", ...).
FASHION_MNIST_CLASSES = ("T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                         "sneaker", "bag", "ankle boot")
# Label order of animal-mnist 0.4: alphabetical (checked by eye on the first images per label).
ANIMAL_MNIST_CLASSES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse",
                        "sheep", "zebra")
ANIMAL_SPLIT_SEED = 0
ANIMAL_TEST_PER_CLASS = 200  # of 1,000 per class: an 8k/2k train/test split
SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


class MissingSourceError(UserError, FileNotFoundError):
  """A data source is not installed; the message carries the exact install command."""


def check_split(split: str) -> None:
  if split not in SPLITS:
    raise UserError(f"Unknown split {split!r}; valid splits: {list(SPLITS)}.")


def grey_to_rgb(images: np.ndarray) -> np.ndarray:
  """[N, H, W] uint8 -> [N, H, W, 3] uint8."""
  return np.repeat(images[..., None], 3, axis=-1)


def read_idx(path: str) -> np.ndarray:
  """Reads a gzipped IDX file (the MNIST format) into a uint8 array."""
  with gzip.open(path, "rb") as f:
    data = f.read()
  ndim = data[3]
  dims = np.frombuffer(data, ">u4", ndim, 4).astype(int)
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def read_fashion_mnist(split: str, directory: str = FASHION_MNIST_DIR):
  """Fashion-MNIST from the Debian package.

  Returns:
    images [N, 28, 28, 3] uint8, labels [N] int32, class names (10).
  """
  check_split(split)
  prefix = "train" if split == "train" else "t10k"
  paths = [os.path.join(directory, f"{prefix}-{kind}-idx{n}-ubyte.gz")
           for kind, n in (("images", 3), ("labels", 1))]
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    raise MissingSourceError(f"Fashion-MNIST files not found ({missing[0]}). Install them with: "
                             f"{FASHION_MNIST_INSTALL}")
  images, labels = (read_idx(p) for p in paths)
  return grey_to_rgb(images), labels.astype(np.int32), list(FASHION_MNIST_CLASSES)


def animal_mnist_files():
  """Paths of the two pickles inside the installed `animal_mnist` package."""
  spec = importlib.util.find_spec("animal_mnist")
  if spec is None or not spec.submodule_search_locations:
    raise MissingSourceError(f"Animal-MNIST is not installed. Install it with: "
                             f"{ANIMAL_MNIST_INSTALL}")
  root = os.path.join(list(spec.submodule_search_locations)[0], "data", "Animal_MNIST")
  paths = [os.path.join(root, f"animal_{kind}_version_3.gz") for kind in ("data", "label")]
  if not all(os.path.exists(p) for p in paths):
    raise MissingSourceError(f"Animal-MNIST data files missing under {root}. Reinstall with: "
                             f"{ANIMAL_MNIST_INSTALL}")
  return paths


def animal_mnist_test_mask(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Fixed, seeded, stratified test mask [N] bool that keeps duplicate images together.

  Per class, groups of identical images are shuffled with the fixed seed and taken into test
  until `ANIMAL_TEST_PER_CLASS` images are reached.
  """
  rng = np.random.default_rng(ANIMAL_SPLIT_SEED)
  digests = np.array([hashlib.sha1(im.tobytes()).hexdigest() for im in images])
  mask = np.zeros(len(images), bool)
  for c in np.unique(labels):
    groups = np.unique(digests[labels == c])
    taken = 0
    for digest in groups[rng.permutation(len(groups))]:
      if taken >= ANIMAL_TEST_PER_CLASS:
        break
      members = digests == digest
      mask |= members
      taken += int(members.sum())
  return mask


def read_animal_mnist(split: str):
  """Animal-MNIST (28x28 silhouettes) with this project's fixed train/test split.

  Returns:
    images [N, 28, 28, 3] uint8, labels [N] int32, class names (10).
  """
  check_split(split)
  data_path, label_path = animal_mnist_files()
  with gzip.open(data_path, "rb") as f:
    images = np.asarray(pickle.load(f), np.uint8)
  with gzip.open(label_path, "rb") as f:
    labels = np.asarray(pickle.load(f)).astype(np.int32)
  test = animal_mnist_test_mask(images, labels)
  keep = test if split == "test" else ~test
  return grey_to_rgb(images[keep]), labels[keep], list(ANIMAL_MNIST_CLASSES)


def _list_classes(root: str):
  classes = sorted(d for d in os.listdir(root)
                   if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
  if not classes:
    raise UserError(f"Image folder {root!r} has no class sub-folders; expected one sub-folder "
                     f"per class (e.g. {root}/cat/0001.png).")
  return classes


def decode_image(path: str) -> np.ndarray:
  """The image file as RGB uint8 [H, W, 3] (fully decoded, so a truncated file fails here)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  with Image.open(path) as im:
    return np.asarray(im.convert("RGB"), np.uint8)


def warn_unreadable(root: str, failures: list[tuple[str, str]]) -> None:
  """One warning naming every unreadable file under `root` (they are skipped)."""
  if failures:
    names = "; ".join(f"{os.path.relpath(p, root)} ({why})" for p, why in failures)
    LOG.warning("skipped %d unreadable image(s) in %s: %s", len(failures), root, names)


def decode_all(paths: list[str], threads: int = 16):
  """Decodes every file: (images or None per path, [(path, reason)] of the unreadable ones)."""
  import concurrent.futures  # pylint: disable=import-outside-toplevel

  def one(path):
    try:
      return decode_image(path), None
    except Exception as err:  # pylint: disable=broad-except  # PIL raises many types
      return None, f"{type(err).__name__}: {errors.one_line(err)}"
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    results = list(pool.map(one, paths))
  failures = [(p, why) for p, (_, why) in zip(paths, results) if why is not None]
  return [im for im, _ in results], failures


def square_image(image: np.ndarray, size: int) -> np.ndarray:
  """[H, W, 3] uint8 -> [size, size, 3] uint8 as CLIP sees it (PIL bicubic resize of the shorter
  side, torchvision's centre crop)."""
  from metatpt_jax.clip import preprocess  # pylint: disable=import-outside-toplevel
  return preprocess.center_crop(preprocess.resize_shorter_side(image, size), size)


def read_folder(root: str, split: str = "test", size: int = 32):
  """An image folder with one sub-folder per class (names: underscores read as spaces).

  With `train/` and `test/` sub-folders, `split` picks one; otherwise the folder is test-only.
  Unreadable files are skipped with one warning that names each of them.

  Returns:
    images [N, size, size, 3] uint8, labels [N] int32, class names (sorted folder names).
  """
  check_split(split)
  if not os.path.isdir(root):
    raise MissingSourceError(f"Image folder {root!r} does not exist.")
  split_dirs = [os.path.join(root, s) for s in SPLITS]
  if all(os.path.isdir(d) for d in split_dirs):
    root = os.path.join(root, split)
  elif split == "train":
    raise UserError(f"Image folder {root!r} has no train/ and test/ sub-folders, so it is a "
                    f"test-only source; ask for split='test'.")
  classes = _list_classes(root)
  paths, labels = [], []
  for label, name in enumerate(classes):
    folder = os.path.join(root, name)
    for file in sorted(os.listdir(folder)):
      if file.lower().endswith(IMAGE_EXTENSIONS):
        paths.append(os.path.join(folder, file))
        labels.append(label)
  decoded, failures = decode_all(paths)
  warn_unreadable(root, failures)
  keep = [i for i, im in enumerate(decoded) if im is not None]
  if not keep:
    raise UserError(f"Image folder {root!r} holds no readable images "
                    f"({', '.join(IMAGE_EXTENSIONS)}).")
  return (np.stack([square_image(decoded[i], size) for i in keep]),
          np.asarray(labels, np.int32)[keep], [c.replace("_", " ") for c in classes])

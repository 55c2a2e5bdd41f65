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

import concurrent.futures
import gzip
import hashlib
import importlib.util
import logging
import os
import pickle

import numpy as np

from metatpt_jax import errors
from metatpt_jax.clip import preprocess
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


def class_folders(root: str) -> list[str]:
  """Sorted names of the class sub-folders of `root` (hidden ones, e.g. .ipynb_checkpoints,
  skipped)."""
  return sorted(d for d in os.listdir(root)
                if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))


def image_files(root: str, folders: list[str]) -> tuple[list[str], np.ndarray]:
  """The image files in the sub-folders `folders` of `root`, in folder order then sorted by
  name: (paths, each path's position in `folders` [N] int32)."""
  paths, positions = [], []
  for position, name in enumerate(folders):
    for file in sorted(os.listdir(os.path.join(root, name))):
      if file.lower().endswith(IMAGE_EXTENSIONS):
        paths.append(os.path.join(root, name, file))
        positions.append(position)
  return paths, np.asarray(positions, np.int32)


def decode_image(path: str) -> np.ndarray:
  """The image file as RGB uint8 [H, W, 3] (fully decoded, so a truncated file fails here)."""
  from PIL import Image
  with Image.open(path) as im:
    return np.asarray(im.convert("RGB"), np.uint8)


def decode_readable(root: str, paths: list[str], threads: int = 16):
  """Decodes every file of `paths` (under `root`) in threads.

  Unreadable files are skipped with one warning that names each, so a bad file never aborts
  a run midway.

  Returns:
    the readable images (RGB uint8 [H, W, 3] each), their positions in `paths` [M] int64.
  """
  def one(path):
    try:
      return decode_image(path), None
    except Exception as err:  # PIL raises many types
      return None, f"{type(err).__name__}: {errors.one_line(err)}"
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    results = list(pool.map(one, paths))
  failures = [f"{os.path.relpath(p, root)} ({why})"
              for p, (_, why) in zip(paths, results, strict=True) if why is not None]
  if failures:
    LOG.warning("skipped %d unreadable image(s) in %s: %s", len(failures), root,
                "; ".join(failures))
  keep = [i for i, (image, _) in enumerate(results) if image is not None]
  return [results[i][0] for i in keep], np.asarray(keep, np.int64)


def read_folder(root: str, split: str = "test", size: int = 32):
  """An image folder with one sub-folder per class (names: underscores read as spaces).

  With `train/` and `test/` sub-folders, `split` picks one; otherwise the folder is test-only.
  Unreadable files are skipped with one warning that names each of them.

  Returns:
    images [N, size, size, 3] uint8 as CLIP sees them (`preprocess.resize_and_center_crop`),
    labels [N] int32, class names (sorted folder names).
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
  classes = class_folders(root)
  if not classes:
    raise UserError(f"Image folder {root!r} has no class sub-folders; expected one sub-folder "
                    f"per class (e.g. {root}/cat/0001.png).")
  paths, labels = image_files(root, classes)
  images, keep = decode_readable(root, paths)
  if not images:
    raise UserError(f"Image folder {root!r} holds no readable images "
                    f"({', '.join(IMAGE_EXTENSIONS)}).")
  return (np.stack([preprocess.resize_and_center_crop(im, size) for im in images]),
          labels[keep], [c.replace("_", " ") for c in classes])

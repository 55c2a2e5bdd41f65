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
import os
import pickle

import numpy as np

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


class MissingSourceError(FileNotFoundError):
  """A data source is not installed; the message carries the exact install command."""


def check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r}; valid splits: {list(SPLITS)}.")


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
    raise ValueError(f"Image folder {root!r} has no class sub-folders; expected one sub-folder "
                     f"per class (e.g. {root}/cat/0001.png).")
  return classes


def _load_square(path: str, size: int) -> np.ndarray:
  """RGB image resized (shorter side) and centre-cropped to [size, size, 3] uint8, as CLIP does."""
  from PIL import Image
  with Image.open(path) as im:
    im = im.convert("RGB")
    scale = size / min(im.size)
    w, h = max(size, round(im.size[0] * scale)), max(size, round(im.size[1] * scale))
    im = im.resize((w, h), Image.BICUBIC)
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), np.uint8)


def read_folder(root: str, split: str = "test", size: int = 32):
  """An image folder with one sub-folder per class (names: underscores read as spaces).

  With `train/` and `test/` sub-folders, `split` picks one; otherwise the folder is test-only.

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
    raise ValueError(f"Image folder {root!r} has no train/ and test/ sub-folders, so it is a "
                     f"test-only source; ask for split='test'.")
  classes = _list_classes(root)
  images, labels = [], []
  for label, name in enumerate(classes):
    folder = os.path.join(root, name)
    for file in sorted(os.listdir(folder)):
      if file.lower().endswith(IMAGE_EXTENSIONS):
        images.append(_load_square(os.path.join(folder, file), size))
        labels.append(label)
  if not images:
    raise ValueError(f"Image folder {root!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
  return (np.stack(images), np.asarray(labels, np.int32),
          [c.replace("_", " ") for c in classes])

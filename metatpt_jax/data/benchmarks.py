"""The paper's benchmarks: the five ImageNet sets and the ten cross-datasets, read lazily.

Domain specs (`domains.load_domain` and `metatpt-bench` accept them):
  paper:imagenet_a                  a tfds-backed set, from $METATPT_DATA_DIR or `data_dir`
  paper:ucf101:/data/ucf101_test    an image-folder set: one sub-folder per class, named as the
                                    dataset's `label_names` (UCF101 middle frames, FGVC Aircraft)
  paper:dtd:/data/dtd_test          any set may also be read from a folder laid out that way

Class names and prompt templates live in `metatpt_jax/assets/datasets/<name>.json` (sources in
the README there). Each file's `label_names` gives, per class, its name in the dataset's own
labels (a tfds ClassLabel name, an ImageNet WordNet id, or a sub-folder name); tfds labels are
mapped through it, so ImageNet-A/-R's 1000-class tfds labels become indices into their 200
classes, and labels outside the file's classes are an error unless listed in `ignored_labels`.

Images are never all in memory: `Domain.images` is a `LazyImages` whose items are read through
`tfds.data_source` (random access into array_record files) and a grain `MapDataset` that applies
CLIP's resize (shorter side, PIL bicubic) and centre crop. The order is the tfds record order
(deterministic for a prepared dataset) or the sorted file order; with several JAX processes each
takes its own contiguous slice (`sharding.process_slice`).
"""
from __future__ import annotations

import concurrent.futures
import functools
import importlib.resources
import json
import os
from collections.abc import Callable
from typing import NamedTuple

import grain
import numpy as np

from metatpt_jax import sharding
from metatpt_jax.clip import preprocess
from metatpt_jax.data import sources
from metatpt_jax.data.labelled import Domain, stratified_subset
from metatpt_jax.errors import UserError

PREFIX = "paper"
_READ_THREADS = 16


class Benchmark(NamedTuple):
  """One dataset of the paper's tables.

  Attributes:
    name: our name, also the assets file name and the domain name `paper:<name>`.
    tfds_name: tfds builder (with config), or None where tfds has none (image folder only).
    split: the tfds split evaluated.
    family: "imagenet" (TPT's random-crop views) or "cross" (TPT's AugMix views).
    num_classes: classes evaluated.
    paper_size: test images in the TPT/CoOp evaluation (ImageNet variants: the whole set;
      cross-datasets: CoOp's test split).
    manual: the tfds builder needs files downloaded by hand (`--manual_dir`).
  """
  name: str
  tfds_name: str | None
  split: str
  family: str
  num_classes: int
  paper_size: int
  manual: bool = False

  @property
  def view_kind(self) -> str:
    return "random_crop" if self.family == "imagenet" else "augmix"


BENCHMARKS = {b.name: b for b in (
    Benchmark("imagenet", "imagenet2012", "validation", "imagenet", 1000, 50000, manual=True),
    Benchmark("imagenet_a", "imagenet_a", "test", "imagenet", 200, 7500),
    Benchmark("imagenet_v2", "imagenet_v2/matched-frequency", "test", "imagenet", 1000, 10000),
    Benchmark("imagenet_r", "imagenet_r", "test", "imagenet", 200, 30000),
    Benchmark("imagenet_sketch", "imagenet_sketch", "test", "imagenet", 1000, 50889),
    Benchmark("oxford_flowers", "oxford_flowers102", "test", "cross", 102, 2463),
    Benchmark("dtd", "dtd", "test", "cross", 47, 1692),
    Benchmark("oxford_pets", "oxford_iiit_pet", "test", "cross", 37, 3669),
    Benchmark("stanford_cars", "cars196", "test", "cross", 196, 8041),
    Benchmark("ucf101", None, "test", "cross", 101, 3783),
    Benchmark("caltech101", "caltech101", "test", "cross", 100, 2465),
    Benchmark("food101", "food101", "validation", "cross", 101, 30300),
    Benchmark("sun397", "sun397/tfds", "test", "cross", 397, 19850),
    Benchmark("fgvc_aircraft", None, "test", "cross", 100, 3333),
    Benchmark("eurosat", "eurosat/rgb", "train", "cross", 10, 8100),
)}
IMAGENET_VARIANTS = tuple(n for n, b in BENCHMARKS.items() if b.family == "imagenet")
CROSS_DATASETS = tuple(n for n, b in BENCHMARKS.items() if b.family == "cross")


class ClassNamesError(UserError):
  """A class-name file disagrees with the dataset's labels."""


def get_benchmark(name: str) -> Benchmark:
  if name not in BENCHMARKS:
    raise UserError(f"Unknown paper dataset {name!r}; valid names: {', '.join(BENCHMARKS)}.")
  return BENCHMARKS[name]


def tfds_build_command(bench: Benchmark, data_dir: str) -> str:
  """The shell command that prepares `bench` for `tfds.data_source` (array_record files)."""
  manual = " --manual_dir=/path/to/imagenet_tars" if bench.manual else ""
  return (f"tfds build {bench.tfds_name}{manual} --data_dir={data_dir} "
          f"--file_format=array_record")


LABEL_MAPS = ("dataset", "published")


@functools.cache
def load_classes(name: str, classnames_dir: str | None = None,
                 label_map: str = "dataset") -> dict:
  """The class-name file of `name`: classnames, label_names, templates (and for ImageNet-A/-R
  imagenet_indices). `classnames_dir` holds replacement `<name>.json` files.

  label_map "dataset" scores each class name against the dataset's label of that name,
  "published" as the authors' code did where the file lists `published_label_swaps` (label
  names whose places it exchanged: TPT's Food101 cheesecake / cheese_plate)."""
  if label_map not in LABEL_MAPS:
    raise ClassNamesError(f"--config.data.label_map={label_map!r}: give one of {LABEL_MAPS}.")
  bench = get_benchmark(name)
  if classnames_dir:
    path = os.path.join(classnames_dir, f"{name}.json")
    with open(path) as f:
      data = json.load(f)
  else:
    path = f"metatpt_jax/assets/datasets/{name}.json"
    data = json.loads(importlib.resources.files("metatpt_jax").joinpath(
        "assets", "datasets", f"{name}.json").read_text())
  names, labels = data.get("classnames", []), data.get("label_names", [])
  if not (len(names) == len(labels) == bench.num_classes):
    raise ClassNamesError(
        f"{path} lists {len(names)} class names and {len(labels)} label names, but {name} has "
        f"{bench.num_classes} classes; give one entry per class, in the same order.")
  for key, values in (("classnames", names), ("label_names", labels)):
    dup = sorted({v for v in values if values.count(v) > 1})
    # CLIP's cleaned ImageNet names give two pairs of classes one name each; the file declares
    # them, so any other duplicate is an error.
    allowed = data.get("duplicate_classnames", []) if key == "classnames" else []
    if dup != sorted(allowed):
      raise ClassNamesError(f"{path}: {key} has duplicates {dup[:5]} (declared: {allowed}); "
                            "names must be unique.")
  if label_map == "published" and data.get("published_label_swaps"):
    published = list(labels)
    for pair in data["published_label_swaps"]:
      if len(pair) != 2 or not set(pair) <= set(labels):
        raise ClassNamesError(f"{path}: published_label_swaps holds label_names pairs: {pair!r}.")
      i, j = (published.index(n) for n in pair)
      published[i], published[j] = published[j], published[i]
    data = dict(data, label_names=published)
  return data


def label_lookup(label_names: list, dataset_names: list, what: str = "") -> np.ndarray:
  """[len(dataset_names)] int32: our class index of each dataset label, -1 where the class-name
  file has no such class (ImageNet-A/-R keep 200 of 1000). Raises ClassNamesError for a file
  name the dataset does not have."""
  position = {n: i for i, n in enumerate(dataset_names)}
  unknown = [n for n in label_names if n not in position]
  if unknown:
    raise ClassNamesError(f"{what}: {len(unknown)} label name(s) of the class-name file are not "
                          f"labels of the dataset (first: {unknown[:3]}; the dataset's first: "
                          f"{list(dataset_names)[:3]}). The file belongs to another dataset or "
                          "version.")
  lut = np.full(len(dataset_names), -1, np.int32)
  lut[[position[n] for n in label_names]] = np.arange(len(label_names))
  return lut


def map_labels(raw: np.ndarray, lut: np.ndarray, ignored_ids, what: str):
  """(kept record positions [M], labels [M] int32): records of ignored labels are dropped; any
  other label outside the class-name file is a ClassNamesError."""
  raw = np.asarray(raw, np.int64)
  if raw.size and (raw.min() < 0 or raw.max() >= len(lut)):
    raise ClassNamesError(f"{what}: labels range over [{raw.min()}, {raw.max()}] but the "
                          f"dataset declares {len(lut)} classes.")
  mapped = lut[raw]
  ignored = np.isin(raw, list(ignored_ids))
  stray = (mapped < 0) & ~ignored
  if stray.any():
    raise ClassNamesError(
        f"{what}: {int(stray.sum())} of {len(raw)} examples carry labels outside the "
        f"{int((lut >= 0).sum())} classes of the class-name file (e.g. dataset label "
        f"{int(raw[stray][0])}); the file's subset does not match the data.")
  keep = np.flatnonzero(~ignored)
  return keep, mapped[keep].astype(np.int32)


def as_rgb(image: np.ndarray) -> np.ndarray:
  """A decoded image [H, W, C] (C 1, 3 or 4, or [H, W]) as RGB uint8 [H, W, 3]."""
  image = np.asarray(image, np.uint8)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  elif image.shape[-1] == 4:
    image = image[..., :3]
  return image


def to_canvas(image: np.ndarray, canvas_size: int) -> tuple[np.ndarray, np.ndarray]:
  """A decoded image on a [canvas_size, canvas_size, 3] uint8 canvas (top-left, zero padding)
  and its extent [2] int32 (height, width). Aspect ratio is kept; an image whose longer side
  exceeds `canvas_size` is first shrunk to it (PIL bicubic, antialiased)."""
  image = as_rgb(image)
  height, width = image.shape[:2]
  if max(height, width) > canvas_size:
    from PIL import Image
    ratio = canvas_size / max(height, width)
    new = (max(1, min(canvas_size, round(width * ratio))),
           max(1, min(canvas_size, round(height * ratio))))
    image = np.asarray(Image.fromarray(image).resize(new, Image.BICUBIC), np.uint8)
    height, width = image.shape[:2]
  canvas = np.zeros((canvas_size, canvas_size, 3), np.uint8)
  canvas[:height, :width] = image
  return canvas, np.array([height, width], np.int32)


def view_inputs(image: np.ndarray, size: int, canvas_size: int) -> dict:
  """What a method reads of one decoded image: view 0 ("image") and, with canvas_size > 0, the
  full image the random views are cut from ("canvas", "extent")."""
  out = {"image": preprocess.resize_and_center_crop(as_rgb(image), size)}
  if canvas_size:
    out["canvas"], out["extent"] = to_canvas(image, canvas_size)
  return out


class LazyImages:
  """[N, S, S, 3] uint8 images (view 0) read when indexed, as `np.ndarray` would return them.

  Supports `len`, `shape`, `dtype`, iteration, and indexing by an int, a slice or an integer
  array (several images are read in parallel threads). `batch(indices)` also returns the full
  decoded images on their canvases (`view_inputs`) when the set was opened with a canvas.
  """

  def __init__(self, dataset: grain.MapDataset, size: int, canvas_size: int = 0):
    self._dataset = dataset
    self.shape = (len(dataset), size, size, 3)
    self.dtype = np.dtype(np.uint8)
    self.canvas_size = canvas_size

  def __len__(self):
    return self.shape[0]

  def batch(self, indices) -> dict:
    """{"image": [B, S, S, 3] uint8, and "canvas" [B, M, M, 3] uint8, "extent" [B, 2]}."""
    indices = np.asarray(indices).ravel()
    with concurrent.futures.ThreadPoolExecutor(_READ_THREADS) as pool:
      items = list(pool.map(lambda i: self._dataset[int(i)], indices))
    if not items:
      return {"image": np.zeros((0,) + self.shape[1:], np.uint8)}
    return {k: np.stack([item[k] for item in items]) for k in items[0]}

  def __getitem__(self, key):
    if isinstance(key, (int, np.integer)):
      return self._dataset[int(key)]["image"]
    indices = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key)
    images = self.batch(indices)["image"]
    return images.reshape(indices.shape + self.shape[1:])

  def __iter__(self):
    return (self[i] for i in range(len(self)))


def lazy_images(read: Callable[[int], np.ndarray], positions: np.ndarray,
                size: int, canvas_size: int = 0) -> LazyImages:
  """LazyImages over `read(positions[i])`: view 0 CLIP-resized to `size`, and the full image on
  a canvas when `canvas_size` > 0."""
  positions = np.asarray(positions, np.int64)
  dataset = grain.MapDataset.source(positions).map(
      lambda p: view_inputs(read(int(p)), size, canvas_size))
  return LazyImages(dataset, size, canvas_size)


class Records(NamedTuple):
  """A dataset as read: a random-access reader over positions and each position's label."""
  read: Callable[[int], np.ndarray]  # position -> decoded image [H, W, C] uint8
  positions: np.ndarray  # [N] int64, in deterministic order
  labels: np.ndarray  # [N] int32, our class indices


def read_tfds(bench: Benchmark, classes: dict, data_dir: str) -> Records:
  """Opens the prepared tfds split (MissingSourceError naming the `tfds build` command if it
  is not prepared) and maps its labels to our classes."""
  import tensorflow_datasets as tfds
  try:
    source = tfds.data_source(bench.tfds_name, split=bench.split, data_dir=data_dir,
                              download=False)
  except Exception as err:  # tfds raises several types for "not there"; say what to do
    builder = tfds.builder(bench.tfds_name, data_dir=data_dir)
    if builder.is_prepared() and builder.info.file_format == "array_record":
      raise
    raise sources.MissingSourceError(
        f"Dataset {bench.name!r} (tfds {bench.tfds_name}, split {bench.split}) is not prepared "
        f"as array_record under {data_dir}. Prepare it with:\n  "
        f"{tfds_build_command(bench, data_dir)}\n(or point $METATPT_DATA_DIR / "
        "--config.data.data_dir at the directory that holds it).") from err
  label_feature = tfds.builder(bench.tfds_name, data_dir=data_dir).info.features["label"]
  what = f"{bench.name} (tfds {bench.tfds_name})"
  names = list(label_feature.names)
  lut = label_lookup(classes["label_names"], names, what=what)
  ignored = [names.index(n) for n in classes.get("ignored_labels", [])]
  read = lambda i: source[i]["image"]
  # Labels need one pass over the records, which decodes every image once (ImageNet val: about
  # a minute on 16 threads); a skip-decoding reader would be faster but tfds' mock data, which
  # the tests run on, cannot serve undecoded images without TensorFlow.
  with concurrent.futures.ThreadPoolExecutor(_READ_THREADS) as pool:
    raw = np.fromiter(pool.map(lambda i: int(source[i]["label"]), range(len(source))), np.int64,
                      count=len(source))
  keep, labels = map_labels(raw, lut, ignored, what)
  return Records(read, keep.astype(np.int64), labels)


def read_image_folder(bench: Benchmark, classes: dict, root: str) -> Records:
  """A folder with one sub-folder per class, named as the class file's `label_names`."""
  if not os.path.isdir(root):
    raise sources.MissingSourceError(
        f"Image folder {root!r} for {bench.name} does not exist; it needs one sub-folder per "
        f"class, named as `label_names` in metatpt_jax/assets/datasets/{bench.name}.json.")
  found = sources.class_folders(root)
  what = f"{bench.name} folder {root}"
  unknown = sorted(set(found) - set(classes["label_names"]))
  missing = sorted(set(classes["label_names"]) - set(found))
  if unknown or missing:
    raise ClassNamesError(
        f"{what} has {len(found)} class sub-folders but {bench.name} has "
        f"{len(classes['label_names'])} classes; sub-folders not in the class-name file: "
        f"{unknown[:5]}, classes without a sub-folder: {missing[:5]}. Name the sub-folders as "
        f"`label_names` in metatpt_jax/assets/datasets/{bench.name}.json.")
  paths, folder = sources.image_files(root, found)
  label_of_folder = np.array([classes["label_names"].index(n) for n in found], np.int32)
  # Every file is decoded once before any work, so an unreadable one is skipped (one warning
  # naming each) instead of aborting the run midway.
  readable = list(readable_files(root, tuple(paths)))
  paths, labels = [paths[i] for i in readable], label_of_folder[folder[readable]]
  if not paths:
    raise UserError(f"{what} holds no readable images ({', '.join(sources.IMAGE_EXTENSIONS)}).")
  return Records(lambda i: sources.decode_image(paths[i]), np.arange(len(paths), dtype=np.int64),
                 labels)


@functools.lru_cache(maxsize=8)
def readable_files(root: str, paths: tuple) -> tuple:
  """Positions of the files of `paths` that decode (once per process and folder listing)."""
  return tuple(sources.decode_readable(root, list(paths), _READ_THREADS)[1])


def parse_paper_spec(spec: str) -> tuple[Benchmark, str | None]:
  """'paper:<name>[:<folder>]' -> (Benchmark, folder or None)."""
  head, _, rest = spec.partition(":")
  if head != PREFIX or not rest:
    raise UserError(f"Domain {spec!r}: expected 'paper:<name>' or 'paper:<name>:<folder>'; "
                     f"names: {', '.join(BENCHMARKS)}.")
  name, _, folder = rest.partition(":")
  bench = get_benchmark(name)
  if bench.tfds_name is None and not folder:
    raise UserError(f"{name} has no tfds builder: give its image folder, e.g. "
                     f"'paper:{name}:/data/{name}_test' (one sub-folder per class).")
  return bench, folder or None


def load_benchmark(spec: str, *, num_images: int | None = None, seed: int = 0,
                   image_size: int = 224, data_dir: str | None = None,
                   classnames_dir: str | None = None, process_index: int | None = 0,
                   process_count: int | None = 1, canvas_size: int = 0,
                   label_map: str = "dataset"):
  """Loads a paper dataset as a `Domain` with lazily read images.

  Args:
    spec: 'paper:<name>' or 'paper:<name>:<folder>' (module docstring).
    num_images: keep a seeded stratified subset of this size (None: all, as the paper).
    seed: chooses the subset.
    image_size: side S of the images (arch.vision.image_size; 224 for ViT-B/16).
    data_dir: tfds data directory (default $METATPT_DATA_DIR or ~/tensorflow_datasets).
    classnames_dir: a directory of replacement `<name>.json` class-name files.
    process_index, process_count: a share of the images (default: all of them; None: JAX's
      process); each process then holds a disjoint contiguous slice of the subset. The
      benchmark runner loads everything and slices the sample indices itself, so indices (and
      keys) stay global.
    canvas_size: > 0 keeps each decoded image on a canvas of this side (aspect preserved,
      shrunk if larger) for TPT's random crops (`LazyImages.batch`); 0 keeps view 0 only.
    label_map: "dataset" (labels as the dataset names them) or "published" (as the authors'
      code scored them, where that differs: `load_classes`).
  Returns:
    Domain(name=spec, images=LazyImages [N, S, S, 3] uint8, labels [N] int32, class_names).
  """
  # On use: tfds_builders imports tensorflow_datasets, which folder-only users never need.
  from metatpt_jax.data import tfds_builders
  bench, folder = parse_paper_spec(spec)
  classes = load_classes(bench.name, classnames_dir, label_map)
  if folder:
    records = read_image_folder(bench, classes, folder)
  else:
    records = read_tfds(bench, classes, data_dir or tfds_builders.default_data_dir())
  keep = stratified_subset(records.labels, num_images or len(records.labels), seed)
  keep = keep[sharding.process_slice(len(keep), process_index, process_count)]
  images = lazy_images(records.read, records.positions[keep], image_size, canvas_size)
  name = f"{PREFIX}:{bench.name}" + (f":{folder}" if folder else "")
  return Domain(name, images, records.labels[keep], list(classes["classnames"]))

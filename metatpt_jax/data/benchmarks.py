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
from typing import Callable, NamedTuple

import grain
import numpy as np

from metatpt_jax import sharding
from metatpt_jax.clip import preprocess
from metatpt_jax.data import sources

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


class ClassNamesError(ValueError):
  """A class-name file disagrees with the dataset's labels."""


def get_benchmark(name: str) -> Benchmark:
  if name not in BENCHMARKS:
    raise ValueError(f"Unknown paper dataset {name!r}; valid names: {', '.join(BENCHMARKS)}.")
  return BENCHMARKS[name]


def tfds_build_command(bench: Benchmark, data_dir: str) -> str:
  """The shell command that prepares `bench` for `tfds.data_source` (array_record files)."""
  manual = " --manual_dir=/path/to/imagenet_tars" if bench.manual else ""
  return (f"tfds build {bench.tfds_name}{manual} --data_dir={data_dir} "
          f"--file_format=array_record")


@functools.lru_cache(maxsize=None)
def load_classes(name: str, classnames_dir: str | None = None) -> dict:
  """The class-name file of `name`: classnames, label_names, templates (and for ImageNet-A/-R
  imagenet_indices). `classnames_dir` holds replacement `<name>.json` files."""
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


def clip_square(image: np.ndarray, size: int) -> np.ndarray:
  """A decoded image [H, W, C] (C 1 or 3, or [H, W]) -> [size, size, 3] uint8 as CLIP sees it:
  shorter side resized to `size` (PIL bicubic), centre crop."""
  image = np.asarray(image, np.uint8)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  elif image.shape[-1] == 4:
    image = image[..., :3]
  return preprocess.center_crop(preprocess.resize_shorter_side(image, size), size)


class LazyImages:
  """[N, S, S, 3] uint8 images read when indexed, as `np.ndarray` would return them.

  Supports `len`, `shape`, `dtype`, iteration, and indexing by an int, a slice or an integer
  array (several images are read in parallel threads).
  """

  def __init__(self, dataset: grain.MapDataset, size: int):
    self._dataset = dataset
    self.shape = (len(dataset), size, size, 3)
    self.dtype = np.dtype(np.uint8)

  def __len__(self):
    return self.shape[0]

  def __getitem__(self, key):
    if isinstance(key, (int, np.integer)):
      return self._dataset[int(key)]
    indices = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key)
    with concurrent.futures.ThreadPoolExecutor(_READ_THREADS) as pool:
      images = list(pool.map(lambda i: self._dataset[int(i)], indices.ravel()))
    if not images:
      return np.zeros((0,) + self.shape[1:], np.uint8)
    return np.stack(images).reshape(indices.shape + self.shape[1:])

  def __iter__(self):
    return (self[i] for i in range(len(self)))


def lazy_images(read: Callable[[int], np.ndarray], positions: np.ndarray,
                size: int) -> LazyImages:
  """LazyImages over `read(positions[i])`, CLIP-resized to `size`."""
  positions = np.asarray(positions, np.int64)
  dataset = grain.MapDataset.source(positions).map(lambda p: clip_square(read(int(p)), size))
  return LazyImages(dataset, size)


class Records(NamedTuple):
  """A dataset as read: a random-access reader over positions and each position's label."""
  read: Callable[[int], np.ndarray]  # position -> decoded image [H, W, C] uint8
  positions: np.ndarray  # [N] int64, in deterministic order
  labels: np.ndarray  # [N] int32, our class indices


def read_tfds(bench: Benchmark, classes: dict, data_dir: str) -> Records:
  """Opens the prepared tfds split (MissingSourceError naming the `tfds build` command if it
  is not prepared) and maps its labels to our classes."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
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
  found = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
  what = f"{bench.name} folder {root}"
  unknown = sorted(set(found) - set(classes["label_names"]))
  missing = sorted(set(classes["label_names"]) - set(found))
  if unknown or missing:
    raise ClassNamesError(
        f"{what} has {len(found)} class sub-folders but {bench.name} has "
        f"{len(classes['label_names'])} classes; sub-folders not in the class-name file: "
        f"{unknown[:5]}, classes without a sub-folder: {missing[:5]}. Name the sub-folders as "
        f"`label_names` in metatpt_jax/assets/datasets/{bench.name}.json.")
  index = {n: i for i, n in enumerate(classes["label_names"])}
  paths, labels = [], []
  for name in found:
    for file in sorted(os.listdir(os.path.join(root, name))):
      if file.lower().endswith(sources.IMAGE_EXTENSIONS):
        paths.append(os.path.join(root, name, file))
        labels.append(index[name])
  if not paths:
    raise ValueError(f"{what} holds no images ({', '.join(sources.IMAGE_EXTENSIONS)}).")

  def read(i):
    from PIL import Image  # pylint: disable=import-outside-toplevel
    with Image.open(paths[i]) as im:
      return np.asarray(im.convert("RGB"))

  return Records(read, np.arange(len(paths), dtype=np.int64), np.asarray(labels, np.int32))


def parse_paper_spec(spec: str) -> tuple[Benchmark, str | None]:
  """'paper:<name>[:<folder>]' -> (Benchmark, folder or None)."""
  head, _, rest = spec.partition(":")
  if head != PREFIX or not rest:
    raise ValueError(f"Domain {spec!r}: expected 'paper:<name>' or 'paper:<name>:<folder>'; "
                     f"names: {', '.join(BENCHMARKS)}.")
  name, _, folder = rest.partition(":")
  bench = get_benchmark(name)
  if bench.tfds_name is None and not folder:
    raise ValueError(f"{name} has no tfds builder: give its image folder, e.g. "
                     f"'paper:{name}:/data/{name}_test' (one sub-folder per class).")
  return bench, folder or None


def load_benchmark(spec: str, *, num_images: int | None = None, seed: int = 0,
                   image_size: int = 224, data_dir: str | None = None,
                   classnames_dir: str | None = None, process_index: int | None = None,
                   process_count: int | None = None):
  """Loads a paper dataset as a `domains.Domain` with lazily read images.

  Args:
    spec: 'paper:<name>' or 'paper:<name>:<folder>' (module docstring).
    num_images: keep a seeded stratified subset of this size (None: all, as the paper).
    seed: chooses the subset.
    image_size: side S of the images (arch.vision.image_size; 224 for ViT-B/16).
    data_dir: tfds data directory (default $METATPT_DATA_DIR or ~/tensorflow_datasets).
    classnames_dir: a directory of replacement `<name>.json` class-name files.
    process_index, process_count: this process's share (default: JAX's); each process takes a
      disjoint contiguous slice of the (subset's) images.
  Returns:
    Domain(name=spec, images=LazyImages [N, S, S, 3] uint8, labels [N] int32, class_names).
  """
  from metatpt_jax.data import domains, tfds_builders  # pylint: disable=import-outside-toplevel
  bench, folder = parse_paper_spec(spec)
  classes = load_classes(bench.name, classnames_dir)
  if folder:
    records = read_image_folder(bench, classes, folder)
  else:
    records = read_tfds(bench, classes, data_dir or tfds_builders.default_data_dir())
  keep = domains.stratified_subset(records.labels, num_images or len(records.labels), seed)
  keep = keep[sharding.process_slice(len(keep), process_index, process_count)]
  images = lazy_images(records.read, records.positions[keep], image_size)
  name = f"{PREFIX}:{bench.name}" + (f":{folder}" if folder else "")
  return domains.Domain(name, images, records.labels[keep], list(classes["classnames"]))

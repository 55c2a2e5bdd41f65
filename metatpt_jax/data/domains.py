"""Test domains addressed by strings: a source, optionally shifted by a seeded corruption.

Spec grammar (`load_domain`):
  fashion_mnist | fashion_mnist:clean           the clean images
  animal_mnist:gaussian_noise:5                 an ImageNet-C corruption at severity 1..5
  fashion_mnist:affine:3                        random rotation/zoom-out/translation
  folder:/path/to/dir[:clean | :<shift>:<sev>]  an image folder (one sub-folder per class)
  paper:imagenet_a | paper:ucf101:/path/to/dir  the paper's benchmarks (`benchmarks` module),
                                                images read lazily, no shifts
  artwork:openmoji_black[:plain | :cluttered][:<M>_classes]
                                                world v3: a held-out style of emoji artwork
                                                (`artwork.world`; splits "dev" and "test"),
                                                over all classes or a fixed subset of M

What is deterministic from `seed`: which images are kept when `num_images` < N (a stratified
subset that does not depend on the shift, so domains of one source at one seed hold the same
images and accuracies can be compared pairwise), and each image's shift, seeded from
(seed, shift, severity, the image's index in its source).
"""
from __future__ import annotations

import functools
import hashlib
import os
from typing import NamedTuple

import numpy as np

from metatpt_jax.data import benchmarks, corruptions, sources, tfds_builders
from metatpt_jax.data.labelled import Domain, stratified_subset
from metatpt_jax.errors import UserError

PACKAGED_SOURCES = tuple(tfds_builders.BUILDERS)
SOURCES = PACKAGED_SOURCES + ("folder", "paper")


class DomainSpec(NamedTuple):
  source: str
  path: str | None
  shift: str  # "clean" or a name in corruptions.SHIFTS
  severity: int  # 0 when clean

  @property
  def name(self) -> str:
    head = f"folder:{self.path}" if self.source == "folder" else self.source
    return f"{head}:clean" if self.shift == "clean" else f"{head}:{self.shift}:{self.severity}"


def parse_spec(spec: str) -> DomainSpec:
  """Parses a domain string (grammar in the module docstring); raises ValueError listing
  the valid names."""
  source, _, rest = spec.partition(":")
  if source not in SOURCES:
    raise UserError(f"Unknown source {source!r} in domain {spec!r}; valid sources: "
                     f"{', '.join(SOURCES)}.")
  path = None
  parts = rest.split(":") if rest else []
  if source == "folder":
    # A path may hold colons: the shift, if any, is the tail.
    if len(parts) >= 3 and parts[-2] in corruptions.SHIFTS:
      path, parts = ":".join(parts[:-2]), parts[-2:]
    elif parts and parts[-1] == "clean":
      path, parts = ":".join(parts[:-1]), parts[-1:]
    else:
      path, parts = rest, []
    if not path:
      raise UserError(f"Domain {spec!r}: give a folder path, e.g. 'folder:/data/pets'.")
  if not parts or parts == ["clean"]:
    return DomainSpec(source, path, "clean", 0)
  if len(parts) != 2:
    raise UserError(f"Domain {spec!r}: expected '<source>:clean' or "
                     f"'<source>:<shift>:<severity>'.")
  name, severity = parts
  try:
    severity = int(severity)
  except ValueError as e:
    raise UserError(f"Domain {spec!r}: severity must be one of "
                     f"{list(corruptions.SEVERITIES)}, got {severity!r}.") from e
  corruptions.check_shift(name, severity)
  return DomainSpec(source, path, name, severity)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
  """Square [N, H, H, 3] uint8 -> [N, size, size, 3] uint8 (bilinear, as the 28-px sets are
  upsampled). Nothing is cropped: images of other shapes go through CLIP's resize and centre
  crop (`preprocess.resize_and_center_crop`), as the folder and paper sources do."""
  if images.shape[1] != images.shape[2]:
    raise ValueError(f"resize_images takes square images, got shape {images.shape}.")
  if images.shape[1:3] == (size, size):
    return images
  from PIL import Image
  return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR))
                   for im in images])


@functools.lru_cache(maxsize=16)
def load_source(source: str, split: str, image_size: int, path: str | None = None,
                data_dir: str | None = None):
  """A whole source split at `image_size` (cached; arrays are read-only).

  Returns:
    images [N, image_size, image_size, 3] uint8, labels [N] int32, class names.
  """
  if source == "folder":
    images, labels, names = sources.read_folder(path, split, image_size)
  elif source in PACKAGED_SOURCES:
    images, labels, names = tfds_builders.load_packaged(source, split, data_dir)
    images = resize_images(images, image_size)
  else:
    raise UserError(f"Unknown source {source!r}; valid sources: {', '.join(SOURCES)}.")
  images.flags.writeable = False
  return images, labels, names


def shift_seeds(seed: int, shift: str, severity: int, indices: np.ndarray) -> np.ndarray:
  """Per-image seeds [N] uint32 from (seed, shift, severity, index in the source)."""
  shift_id = corruptions.SHIFTS.index(shift)
  return np.array([np.random.SeedSequence([seed, shift_id, severity, int(i)]).generate_state(1)[0]
                   for i in indices], np.uint32)


def _cache_path(cache_dir, name, split, num_images, seed, image_size):
  key = hashlib.sha1(repr((name, split, num_images, seed, image_size)).encode()).hexdigest()[:16]
  return os.path.join(cache_dir, f"domain-{key}.npz")


def load_domain(spec: str, *, split: str = "test", num_images: int | None = None,
                seed: int = 0, image_size: int = 32, data_dir: str | None = None,
                cache_dir: str | None = None, classnames_dir: str | None = None,
                canvas_size: int = 0, label_map: str = "dataset") -> Domain:
  """Loads the domain `spec` (grammar in the module docstring).

  Args:
    spec: e.g. "fashion_mnist:gaussian_noise:3".
    split: "train" or "test"; the splits never share an image.
    num_images: keep a seeded stratified subset of this size (None: all).
    seed: chooses the subset and seeds every image's shift.
    image_size: side S of the returned images (sources are resized before the shift).
    data_dir: where tfds prepares the packaged sets (default $METATPT_DATA_DIR or
      ~/tensorflow_datasets).
    cache_dir: if given, shifted domains are stored there as .npz and reused.
    classnames_dir: paper datasets only: a directory of replacement class-name files.
    canvas_size: paper datasets only: keep each decoded image on a canvas of this side for
      TPT's random crops from the full image (0: view 0 only; see `batch_inputs`).
    label_map: paper datasets only: "dataset" or "published" (`benchmarks.load_classes`).
  Returns:
    Domain with images [N, S, S, 3] uint8 and labels [N] int32. For "paper:" specs `split` and
    `cache_dir` are unused (each dataset has its evaluation split) and images is a
    `benchmarks.LazyImages`.
  """
  if spec.startswith(benchmarks.PREFIX + ":"):
    return benchmarks.load_benchmark(spec, num_images=num_images, seed=seed,
                                     image_size=image_size, data_dir=data_dir,
                                     classnames_dir=classnames_dir, canvas_size=canvas_size,
                                     label_map=label_map)
  if spec.startswith(ARTWORK_PREFIX):
    return _artwork_domain(spec, split, num_images, seed, image_size)
  parsed = parse_spec(spec)
  sources.check_split(split)
  path = None if cache_dir is None else _cache_path(cache_dir, parsed.name, split, num_images,
                                                    seed, image_size)
  images, labels, names = load_source(parsed.source, split, image_size, parsed.path, data_dir)
  if path and os.path.exists(path):
    with np.load(path) as cached:
      return Domain(parsed.name, cached["images"], cached["labels"], list(names))
  indices = stratified_subset(labels, num_images if num_images is not None else len(labels),
                              seed)
  images, labels = images[indices], labels[indices]
  if parsed.shift != "clean":
    seeds = shift_seeds(seed, parsed.shift, parsed.severity, indices)
    images = corruptions.shift_images(images, parsed.shift, parsed.severity, seeds)
  if path:
    os.makedirs(cache_dir, exist_ok=True)
    np.savez(path, images=images, labels=labels)
  return Domain(parsed.name, np.array(images), np.array(labels), list(names))


ARTWORK_PREFIX = "artwork:"


def _artwork_parts(spec: str) -> tuple[str, str, int | None]:
  """(style, rendering, number of classes or None) of an artwork domain string."""
  parts = spec[len(ARTWORK_PREFIX):].split(":")
  num_classes = None
  if len(parts) > 1 and parts[-1].endswith("_classes"):
    count = parts.pop()[:-len("_classes")]
    if not count.isdigit():
      raise UserError(f"Domain {spec!r}: a class subset is written '<M>_classes' with M a "
                      "number, e.g. 'artwork:symbola:plain:200_classes'.")
    num_classes = int(count)
  if len(parts) > 2:
    raise UserError(f"Domain {spec!r}: expected 'artwork:<style>[:<rendering>][:<M>_classes]'.")
  return parts[0], parts[1] if len(parts) > 1 else "plain", num_classes


def check_domain(spec: str, split: str) -> None:
  """Refuses a malformed domain string, or a split its source does not have, before any data is
  read (the benchmark checks every domain of a config first)."""
  if spec.startswith(ARTWORK_PREFIX):
    from metatpt_jax.data.artwork import world
    style, rendering, num_classes = _artwork_parts(spec)
    world.check_domain(style, rendering, split, num_classes=num_classes)
  elif spec.startswith(benchmarks.PREFIX + ":"):
    benchmarks.parse_paper_spec(spec)  # the paper's benchmarks read their own test split
  else:
    parse_spec(spec)
    sources.check_split(split)


def _artwork_domain(spec, split, num_images, seed, image_size) -> Domain:
  """artwork:<held-out style>[:<rendering>], a seeded stratified subset of `num_images`."""
  from metatpt_jax.data.artwork import world  # only artwork domains need cairo and the cache
  style, rendering, num_classes = _artwork_parts(spec)
  domain = world.load_domain(style, rendering, split, image_size=image_size, seed=seed,
                             num_classes=num_classes)
  if num_images is None or num_images >= len(domain.labels):
    return domain
  keep = stratified_subset(domain.labels, num_images, seed)
  return domain._replace(images=domain.images[keep], labels=domain.labels[keep])


def batch_inputs(domain: Domain, indices: np.ndarray) -> dict:
  """A method's inputs for `indices` of the domain (an `adapt` batch without "index").

  "image": [B, S, S, 3] float32 in [0, 1] (view 0); for paper datasets opened with a canvas,
  also "canvas" [B, M, M, 3] uint8 and "extent" [B, 2] int32 (the full decoded images TPT's
  random crops are cut from). The in-memory domains are square already: their views are cut
  from the image itself.
  """
  if isinstance(domain.images, benchmarks.LazyImages):
    raw = domain.images.batch(indices)
  else:
    raw = {"image": np.asarray(domain.images[indices])}
  return dict(raw, image=raw["image"].astype(np.float32) / 255.0)

"""Tests of metatpt_jax.data: packaged sources, splits, corruptions, domains, image folders."""
import hashlib

import numpy as np
import pytest
from PIL import Image

from metatpt_jax.data import (
  corruptions,
  domains,
  export,
  load_domain,
  parse_spec,
  sources,
  tfds_builders,
)
from metatpt_jax.errors import UserError


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def _digests(images):
  return {hashlib.sha1(im.tobytes()).hexdigest() for im in images}


def test_fashion_mnist_reader():
  images, labels, names = sources.read_fashion_mnist("test")
  assert images.shape == (10_000, 28, 28, 3) and images.dtype == np.uint8
  assert labels.dtype == np.int32 and np.bincount(labels).tolist() == [1000] * 10
  assert names[0] == "T-shirt" and names[-1] == "ankle boot" and len(names) == 10


def test_animal_mnist_split_is_disjoint_stratified_and_fixed():
  train, train_labels, names = sources.read_animal_mnist("train")
  test, test_labels, _ = sources.read_animal_mnist("test")
  assert len(train) + len(test) == 10_000
  assert not _digests(train) & _digests(test)  # duplicates never straddle the split
  assert np.all(np.abs(np.bincount(test_labels) - sources.ANIMAL_TEST_PER_CLASS) <= 5)
  assert names == list(sources.ANIMAL_MNIST_CLASSES)
  again, _, _ = sources.read_animal_mnist("test")
  np.testing.assert_array_equal(again, test)


def test_tfds_builder_matches_reader(data_dir):
  images, labels, names = tfds_builders.load_packaged("animal_mnist", "test", data_dir)
  raw_images, raw_labels, raw_names = sources.read_animal_mnist("test")
  np.testing.assert_array_equal(images, raw_images)
  np.testing.assert_array_equal(labels, raw_labels)
  assert names == raw_names


def test_domain_is_deterministic_and_subsets_are_shared(data_dir):
  kwargs = dict(num_images=40, image_size=32, data_dir=data_dir)
  clean = load_domain("animal_mnist:clean", seed=3, **kwargs)
  noisy = load_domain("animal_mnist:gaussian_noise:3", seed=3, **kwargs)
  noisy_again = load_domain("animal_mnist:gaussian_noise:3", seed=3, **kwargs)
  other_seed = load_domain("animal_mnist:gaussian_noise:3", seed=4, **kwargs)
  assert noisy.images.shape == (40, 32, 32, 3) and noisy.images.dtype == np.uint8
  assert np.bincount(clean.labels).tolist() == [4] * 10  # stratified
  np.testing.assert_array_equal(clean.labels, noisy.labels)  # same images, shifted
  np.testing.assert_array_equal(noisy.images, noisy_again.images)
  assert not np.array_equal(noisy.images, other_seed.images)
  assert noisy.name == "animal_mnist:gaussian_noise:3"


def test_domain_cache_round_trips(data_dir, tmp_path):
  kwargs = dict(num_images=10, data_dir=data_dir, cache_dir=str(tmp_path))
  first = load_domain("animal_mnist:affine:2", **kwargs)
  second = load_domain("animal_mnist:affine:2", **kwargs)
  assert len(list(tmp_path.iterdir())) == 1
  np.testing.assert_array_equal(first.images, second.images)


@pytest.fixture(scope="module")
def tinted_images():
  # Real silhouettes, tinted so that colour-only corruptions (saturate) have colour to act on.
  images, _, _ = sources.read_animal_mnist("test")
  images = domains.resize_images(images[::500][:3], 32)
  return (images * np.array([1.0, 0.8, 0.6])).astype(np.uint8)


@pytest.mark.parametrize("severity", [1, 5])
@pytest.mark.parametrize("name", corruptions.SHIFTS)
def test_every_shift_runs_and_changes_the_image(name, severity, tinted_images):
  seeds = np.arange(len(tinted_images))
  out = corruptions.shift_images(tinted_images, name, severity, seeds)
  assert out.shape == tinted_images.shape and out.dtype == np.uint8
  assert all(np.any(o != i) for o, i in zip(out, tinted_images))
  np.testing.assert_array_equal(out, corruptions.shift_images(tinted_images, name, severity,
                                                              seeds))


def test_empty_spatter_layers_are_redrawn_not_blackened():
  images, _, _ = sources.read_animal_mnist("test")
  image = domains.resize_images(images[17:18], 32)[0]
  seed = int(domains.shift_seeds(0, "spatter", 1, [17])[0])
  with pytest.raises(FloatingPointError):  # the library's 0/0 on this image and seed
    corruptions._library_corrupt(image, "spatter", 1, seed)
  out = corruptions.corrupt_image(image, "spatter", 1, seed)
  assert out.max() > 0 and np.any(out != image)


def test_corruptions_in_threads_equal_one_at_a_time(tinted_images):
  """The library draws from numpy's global RNG; threads corrupting at once must each get their
  own seed's noise (the seeding is held under a lock)."""
  import concurrent.futures
  work = [(i % len(tinted_images), seed) for i, seed in enumerate(range(24))]
  corrupt = lambda job: corruptions.corrupt_image(tinted_images[job[0]], "shot_noise", 3, job[1])
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    threaded = list(pool.map(corrupt, work))
  for job, got in zip(work, threaded):
    np.testing.assert_array_equal(got, corrupt(job))


def test_images_below_library_minimum_are_upsampled(tinted_images):
  small = domains.resize_images(tinted_images, 28)
  out = corruptions.shift_images(small, "defocus_blur", 2, np.arange(len(small)))
  assert out.shape == small.shape


def _make_folder(root, classes, count=3):
  rng = np.random.default_rng(0)
  for name in classes:
    (root / name).mkdir(parents=True)
    for i in range(count):
      size = (40 + 7 * i, 30 + 5 * i)  # mixed sizes and aspect ratios
      pixels = rng.integers(0, 256, size[::-1] + (3,), dtype=np.uint8)
      Image.fromarray(pixels).save(root / name / f"{i}.png")


def test_folder_source(tmp_path):
  _make_folder(tmp_path / "pets", ["cat", "golden_retriever"])
  domain = load_domain(f"folder:{tmp_path}/pets", image_size=32)
  assert domain.images.shape == (6, 32, 32, 3)
  assert domain.class_names == ["cat", "golden retriever"]
  assert domain.labels.tolist() == [0, 0, 0, 1, 1, 1]
  shifted = load_domain(f"folder:{tmp_path}/pets:contrast:2", image_size=32)
  assert not np.array_equal(shifted.images, domain.images)
  with pytest.raises(ValueError, match="test-only"):
    load_domain(f"folder:{tmp_path}/pets", split="train")
  for split in ("train", "test"):
    _make_folder(tmp_path / "split" / split, ["a", "b"], count=2 if split == "train" else 1)
  assert len(load_domain(f"folder:{tmp_path}/split", split="train").images) == 4
  assert len(load_domain(f"folder:{tmp_path}/split", split="test").images) == 2


@pytest.mark.parametrize("spec, match", [
    ("mnist:clean", "valid sources: fashion_mnist, animal_mnist, folder"),
    ("fashion_mnist:fuzz:3", "valid names: gaussian_noise"),
    ("fashion_mnist:contrast:6", r"Severity must be one of \[1, 2, 3, 4, 5\]"),
    ("fashion_mnist:contrast", "expected"),
])
def test_bad_specs_list_valid_names(spec, match):
  with pytest.raises(ValueError, match=match):
    parse_spec(spec)


def test_bad_split():
  with pytest.raises(ValueError, match="valid splits"):
    load_domain("animal_mnist", split="validation")


def test_missing_sources_name_the_install_command(monkeypatch, tmp_path):
  monkeypatch.setattr(sources, "FASHION_MNIST_DIR", str(tmp_path))
  with pytest.raises(sources.MissingSourceError, match="apt-get install -y dataset-fashion-mnist"):
    sources.read_fashion_mnist("train", directory=str(tmp_path))
  monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(sources.MissingSourceError, match="pip install --no-deps animal-mnist"):
    sources.read_animal_mnist("test")


def test_exported_folder_reads_back_through_the_folder_path(tmp_path):
  """data.export writes a domain as class folders; `folder:` reads the same labels back."""
  rng = np.random.default_rng(0)
  names = ["ankle boot", "bag", "coat"]
  labels = np.array([0, 1, 2, 0, 1, 2], np.int32)
  images = rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8)
  root = str(tmp_path / "exported")
  assert export.write_image_folder(domains.Domain("d", images, labels, names), root) == 6
  back = domains.load_domain(f"folder:{root}", image_size=16)
  assert back.class_names == names  # sorted folder names, underscores read as spaces
  assert sorted(back.labels.tolist()) == sorted(labels.tolist())
  # JPEG is lossy but close on these pixels; mean error of a few grey levels
  assert np.abs(back.images.astype(float).mean() - images.astype(float).mean()) < 5
  with pytest.raises(UserError, match="exists"):
    export.write_image_folder(domains.Domain("d", images, labels, names), root)

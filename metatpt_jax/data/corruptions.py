"""Seeded image shifts: the 19 ImageNet-C corruptions and a random affine geometric shift.

The corruptions are those of PyPI `imagecorruptions-imaug` 1.1.5 (the maintained fork that
works on current numpy and scikit-image). That library draws from numpy's *global* random
state; to make every image's corruption a function of its own seed we seed that state around
each call and restore it afterwards (`_global_numpy_seed`, under a lock, so threads that corrupt
images at once cannot draw from each other's seeding), and pass `seed=` to the two
functions that take one (glass_blur, impulse_noise).

The library refuses images under 32 px, and its kernels are sized for ImageNet's 224 px:
at 32 px the blurs (defocus radius 3-10 px, motion 10-20 px) and zoom are far stronger than on
ImageNet. Images smaller than `MIN_CORRUPTION_SIZE` are upsampled to it (bilinear), corrupted
and resized back. `saturate` changes only colour: at severities 1-3 it leaves a grey image
unchanged, and at 4-5 it tints it red. `spatter` at severity 1 draws an empty liquid layer for
about 1 image in 170 at 32 px, which the library turns into an all-black image (0/0); such a
layer is redrawn from a seed derived from the image's.
"""
from __future__ import annotations

import contextlib
import math
import threading

import numpy as np

from metatpt_jax.errors import UserError

CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
    "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
    "elastic_transform", "pixelate", "jpeg_compression", "speckle_noise", "gaussian_blur",
    "spatter", "saturate")
GEOMETRIC_SHIFTS = ("affine",)
SHIFTS = CORRUPTIONS + GEOMETRIC_SHIFTS
SEVERITIES = (1, 2, 3, 4, 5)
MIN_CORRUPTION_SIZE = 32  # imagecorruptions rejects smaller images
SPATTER_ATTEMPTS = 8  # redraws of an empty spatter layer (see _library_corrupt)
CORRUPTIONS_INSTALL = "pip install imagecorruptions-imaug==1.1.5"
# Random affine per severity: max |rotation| in degrees, min zoom-out scale, max translation
# as a fraction of the side. Objects in these sets fill the frame, so scale only shrinks.
AFFINE_ROTATION = (9.0, 18.0, 27.0, 36.0, 45.0)
AFFINE_MIN_SCALE = (0.92, 0.84, 0.76, 0.68, 0.6)
AFFINE_TRANSLATION = (0.03, 0.06, 0.09, 0.12, 0.15)


def check_shift(name: str, severity: int) -> None:
  if name not in SHIFTS:
    raise UserError(f"Unknown corruption {name!r}; valid names: {', '.join(SHIFTS)} "
                     f"(or 'clean').")
  if severity not in SEVERITIES:
    raise UserError(f"Severity must be one of {list(SEVERITIES)}, got {severity!r}.")


def _import_imagecorruptions():
  try:
    import imagecorruptions
  except ImportError as e:
    raise ImportError(f"The corruptions need imagecorruptions-imaug. Install it with: "
                      f"{CORRUPTIONS_INSTALL}") from e
  return imagecorruptions


# The corruption library offers no Generator argument, so its global state is borrowed, one
# caller at a time.
_GLOBAL_RNG_LOCK = threading.Lock()


@contextlib.contextmanager
def _global_numpy_seed(seed: int):
  """Seeds numpy's global RNG (which the corruption library uses), then restores it."""
  with _GLOBAL_RNG_LOCK:
    state = np.random.get_state()
    np.random.seed(seed)
    try:
      yield
    finally:
      np.random.set_state(state)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
  from PIL import Image
  return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), np.uint8)


def corrupt_image(image: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
  """One seeded ImageNet-C corruption.

  Args:
    image: [S, S, 3] uint8.
    name: one of CORRUPTIONS.
    severity: 1..5.
    seed: integer in [0, 2**32); the same seed gives the same output.
  Returns:
    [S, S, 3] uint8.
  """
  check_shift(name, severity)
  size = image.shape[0]
  work = image if size >= MIN_CORRUPTION_SIZE else _resize(image, MIN_CORRUPTION_SIZE)
  out = work  # spatter that never finds liquid leaves the image as it is
  for attempt in range(SPATTER_ATTEMPTS if name == "spatter" else 1):
    attempt_seed = seed if attempt == 0 else int(
        np.random.SeedSequence([seed, attempt]).generate_state(1)[0])
    try:
      out = _library_corrupt(work, name, severity, attempt_seed)
      break
    except FloatingPointError:
      continue
  return out if size >= MIN_CORRUPTION_SIZE else _resize(out, size)


def _library_corrupt(image, name, severity, seed):
  lib = _import_imagecorruptions()
  kwargs = {"seed": seed} if name in ("glass_blur", "impulse_noise") else {}
  # spatter (severities 1-3) divides by the peak of its liquid layer; on a 32-px image the
  # layer is sometimes empty, 0/0 turns the whole image NaN and then black. Raise instead,
  # so the caller can redraw the layer.
  errors = (np.errstate(invalid="raise", divide="raise") if name == "spatter"
            else contextlib.nullcontext())
  with _global_numpy_seed(seed), errors:
    out = lib.corrupt(np.ascontiguousarray(image), severity=severity, corruption_name=name,
                      **kwargs)
  return np.asarray(out, np.uint8)


def affine_image(image: np.ndarray, severity: int, seed: int) -> np.ndarray:
  """Random rotation, zoom-out and translation about the centre; black fill (the sets'
  background), bilinear sampling.

  Args:
    image: [S, S, 3] uint8.
  Returns:
    [S, S, 3] uint8.
  """
  from PIL import Image
  check_shift("affine", severity)
  rng = np.random.default_rng(seed)
  i = severity - 1
  angle = math.radians(rng.uniform(-AFFINE_ROTATION[i], AFFINE_ROTATION[i]))
  scale = rng.uniform(AFFINE_MIN_SCALE[i], 1.0)
  size = image.shape[0]
  tx, ty = rng.uniform(-AFFINE_TRANSLATION[i], AFFINE_TRANSLATION[i], 2) * size
  # PIL wants the inverse map (output pixel -> input pixel) about the origin.
  cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
  c = (size - 1) / 2
  a, b = cos, sin
  d, e = -sin, cos
  coeffs = (a, b, c - a * (c + tx) - b * (c + ty), d, e, c - d * (c + tx) - e * (c + ty))
  out = Image.fromarray(image).transform((size, size), Image.AFFINE, coeffs, Image.BILINEAR,
                                         fillcolor=(0, 0, 0))
  return np.asarray(out, np.uint8)


def shift_images(images: np.ndarray, name: str, severity: int, seeds: np.ndarray) -> np.ndarray:
  """Applies shift `name` to every image, image i with its own seed.

  Args:
    images: [N, S, S, 3] uint8.
    seeds: [N] integers in [0, 2**32).
  Returns:
    [N, S, S, 3] uint8.
  """
  check_shift(name, severity)
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise ValueError(f"images must be uint8 [N, S, S, 3], got {images.dtype} {images.shape}.")
  fn = affine_image if name == "affine" else (
      lambda im, s, seed: corrupt_image(im, name, s, seed))
  return np.stack([fn(im, severity, int(seed)) for im, seed in zip(images, seeds)])

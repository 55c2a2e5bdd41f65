"""The learned augmentation generator G_phi of MetaTPT (docs/METHOD.md).

G_phi maps K noise vectors z_k (and, optionally, the stop-gradient image feature) to K affine
transforms built from named, bounded factors:

  area      in [area_min, 1]     fraction of the image the crop covers
  log_ratio in [log 3/4, log 4/3] crop aspect ratio
  center_x, center_y             kept so the (unrotated) crop lies inside the image
  rotation  in [-max_rotation, max_rotation] radians
  shear     in [-max_shear, max_shear]
  flip      sign of the raw factor: a hard +-1 (a soft sign in (-1, 1) would squeeze the
            crop horizontally instead of mirroring it), so phi gets no gradient through it

With `photometric=True` five photometric factors follow, each the identity at raw value 0:

  brightness in [-max_brightness, max_brightness]      added to every pixel
  contrast   in [1/max_contrast, max_contrast]         scales about the view's mean
  saturation in [1/max_saturation, max_saturation]     scales about the pixel's grey value
  gamma      in [1/max_gamma, max_gamma]               pixel ** gamma
  blur       in [0, max_blur]                          mix towards the 3x3 box blur (0 for
                                                       raw <= 0)

Each factor is a fixed squashing of (z + delta_phi(z, feature)), where z ~ N(0, I) and the MLP's
last layer starts at zero. So at initialisation area and log-ratio are uniform on their ranges
(normal CDF of a standard normal), the centre is uniform over valid positions and flips are
+-1 with probability 1/2 -- the distribution of TPT's RandomResizedCrop + flip -- while rotation
and shear start at exactly 0 (their noise is scaled by 0 until the generator learns otherwise).
The photometric factors' noise is scaled by `photometric_noise` (mild jitter at initialisation;
0 starts them at the identity).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.stats import norm

from metatpt_jax import views as views_lib

FACTORS = ("area", "log_ratio", "center_x", "center_y", "rotation", "shear", "flip")
NUM_FACTORS = len(FACTORS)  # the affine factors every generator has
PHOTOMETRIC_FACTORS = ("brightness", "contrast", "saturation", "gamma", "blur")
# Noise scale per factor at init: rotation and shear start at the identity.
_NOISE_SCALE = np.array([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0], np.float32)  # NumPy: no backend at import


class GeneratorSpec(NamedTuple):
  """Static bounds of the factors (hashable; a config turns into one)."""
  area_min: float = 0.08
  ratio_min: float = 3 / 4
  ratio_max: float = 4 / 3
  max_rotation: float = math.radians(30.0)
  max_shear: float = 0.3
  hidden: int = 64
  use_feature: bool = True
  # A per-sample shift of every raw factor, shared by all K views (phi["shift"], starts at 0):
  # a direct handle on the crop distribution (where the crops sit, how large, how rotated),
  # which one inner step can move visibly, unlike the MLP behind its zero-initialised layer.
  factor_shift: bool = False
  # Photometric factors beside the affine ones (PHOTOMETRIC_FACTORS), their bounds, and the
  # scale of their noise at initialisation.
  photometric: bool = False
  max_brightness: float = 0.2
  max_contrast: float = 1.5
  max_saturation: float = 1.5
  max_gamma: float = 1.5
  max_blur: float = 1.0
  photometric_noise: float = 0.5

  @property
  def later_fields(self) -> tuple[str, ...]:
    """Added after records were made: without photometric factors, the photometric fields are
    left out of record fingerprints (`bench.fingerprint.result_fields`); with them, their
    bounds are recorded whatever their values."""
    return ("photometric",) + (() if self.photometric else _PHOTOMETRIC_FIELDS)


_PHOTOMETRIC_FIELDS = ("max_brightness", "max_contrast", "max_saturation", "max_gamma",
                       "max_blur", "photometric_noise")


def num_factors(spec: GeneratorSpec) -> int:
  """Raw factors per view: the affine ones, then the photometric ones when enabled."""
  return NUM_FACTORS + (len(PHOTOMETRIC_FACTORS) if spec.photometric else 0)


def _noise_scale(spec: GeneratorSpec) -> np.ndarray:
  photometric = [spec.photometric_noise] * (num_factors(spec) - NUM_FACTORS)
  return np.concatenate([_NOISE_SCALE, np.asarray(photometric, np.float32)])


class Transforms(NamedTuple):
  """What the generator makes of K noise vectors: affines [K, 2, 3] and, with
  `photometric=True`, photometric factors [K, 5] (PHOTOMETRIC_FACTORS' values), else None."""
  theta: jax.Array
  photometric: jax.Array | None = None


class _DeltaMLP(nn.Module):
  hidden: int
  outputs: int

  @nn.compact
  def __call__(self, x):
    h = nn.gelu(nn.Dense(self.hidden, name="hidden")(x))
    # zero init: the generator starts exactly at the TPT-like base distribution
    return nn.Dense(self.outputs, kernel_init=nn.initializers.zeros, name="out")(h)


def init_generator(key: jax.Array, spec: GeneratorSpec, feature_dim: int) -> dict:
  """Generator parameters phi (a pytree)."""
  n = num_factors(spec)
  in_dim = n + (feature_dim if spec.use_feature else 0)
  params = dict(_DeltaMLP(spec.hidden, n).init(key, jnp.zeros((1, in_dim)))["params"])
  if spec.factor_shift:
    params["shift"] = jnp.zeros((n,))
  return params


def sample_noise(key: jax.Array, num: int, spec: GeneratorSpec | None = None) -> jax.Array:
  """[num, num_factors(spec)] standard normal noise z, fixed per sample across steps (spec
  None: the affine factors only). The affine factors' noise is the same with or without
  photometric factors (those draw from a key folded from `key`), so the two generators are
  compared on the same crops."""
  affine = jax.random.normal(key, (num, NUM_FACTORS))
  if spec is None or num_factors(spec) == NUM_FACTORS:
    return affine
  extra = jax.random.normal(jax.random.fold_in(key, 1), (num, num_factors(spec) - NUM_FACTORS))
  return jnp.concatenate([affine, extra], axis=-1)


def raw_factors(phi, spec: GeneratorSpec, noise: jax.Array, feature: jax.Array | None):
  """Pre-squashing factors [K, F] and the generator's deviation from the base [K, F]."""
  chex.assert_rank(noise, 2)
  if noise.shape[-1] != num_factors(spec):
    raise ValueError(f"noise has {noise.shape[-1]} factors; this generator needs "
                     f"{num_factors(spec)}: draw it with sample_noise(key, num, spec).")
  base = noise * jnp.asarray(_noise_scale(spec), noise.dtype)
  inputs = noise
  if spec.use_feature:
    if feature is None:
      raise ValueError("GeneratorSpec.use_feature=True needs the image feature f(x).")
    feat = jax.lax.stop_gradient(feature / jnp.linalg.norm(feature))
    inputs = jnp.concatenate([noise, jnp.broadcast_to(feat, (noise.shape[0],) + feat.shape)], -1)
  mlp = {k: v for k, v in phi.items() if k != "shift"}
  delta = _DeltaMLP(spec.hidden, num_factors(spec)).apply({"params": mlp}, inputs)
  if spec.factor_shift:
    delta = delta + phi["shift"].astype(delta.dtype)
  return base + delta, delta


def factors_to_theta(raw: jax.Array, spec: GeneratorSpec) -> tuple[jax.Array, dict]:
  """Squashes raw factors [F] into bounded named factors and their affine [2, 3]."""
  u = norm.cdf(raw[:4])  # uniform(0, 1) at init
  area = spec.area_min + (1 - spec.area_min) * u[0]
  log_ratio = math.log(spec.ratio_min) + (math.log(spec.ratio_max / spec.ratio_min)) * u[1]
  # side fractions, clipped to the frame (this keeps area and ratio inside their ranges)
  cw = jnp.minimum(jnp.sqrt(area * jnp.exp(log_ratio)), 1.0)
  ch = jnp.minimum(jnp.sqrt(area / jnp.exp(log_ratio)), 1.0)
  cx, cy = (1 - cw) * (2 * u[2] - 1), (1 - ch) * (2 * u[3] - 1)
  rotation = spec.max_rotation * jnp.tanh(raw[4])
  shear = spec.max_shear * jnp.tanh(raw[5])
  flip = jnp.where(raw[6] >= 0, 1.0, -1.0).astype(raw.dtype)
  cos, sin = jnp.cos(rotation), jnp.sin(rotation)
  rot = jnp.stack([jnp.stack([cos, -sin]), jnp.stack([sin, cos])])
  shear_m = jnp.stack([jnp.stack([jnp.ones_like(shear), shear]),
                       jnp.stack([jnp.zeros_like(shear), jnp.ones_like(shear)])])
  crop = views_lib.crop_theta(cx, cy, cw, ch, flip)
  linear = rot @ shear_m @ crop[:, :2]
  theta = jnp.concatenate([linear, crop[:, 2:]], axis=1)
  named = dict(area=cw * ch, ratio=cw / ch, center_x=cx, center_y=cy, rotation=rotation,
               shear=shear, flip=flip)
  return theta, named


def photometric_factors(raw: jax.Array, spec: GeneratorSpec) -> jax.Array:
  """Squashes raw photometric factors [5] into (brightness, contrast, saturation, gamma, blur),
  each the identity at raw value 0."""
  t = jnp.tanh(raw)
  log_scale = lambda bound, x: jnp.exp(math.log(bound) * x)
  return jnp.stack([spec.max_brightness * t[0], log_scale(spec.max_contrast, t[1]),
                    log_scale(spec.max_saturation, t[2]), log_scale(spec.max_gamma, t[3]),
                    spec.max_blur * jax.nn.relu(t[4])])


def generate_transforms(phi, spec: GeneratorSpec, noise, feature=None):
  """K transforms (`Transforms`), named factors {name: [K]}, and the deviation penalty (scalar).

  The penalty is the mean squared deviation of the raw affine factors from their base
  distribution, which keeps learned views near TPT-like crops (the sample's content stays in
  view), plus that of the photometric factors when there are any (each block its own mean, so
  adding photometric factors leaves the crops' penalty as it was).
  """
  raw, delta = raw_factors(phi, spec, noise, feature)
  thetas, named = jax.vmap(lambda r: factors_to_theta(r, spec))(raw[:, :NUM_FACTORS])
  photometric = None
  if spec.photometric:
    photometric = jax.vmap(lambda r: photometric_factors(r, spec))(raw[:, NUM_FACTORS:])
    named.update({name: photometric[:, i] for i, name in enumerate(PHOTOMETRIC_FACTORS)})
  penalty = jnp.mean(delta[:, :NUM_FACTORS] ** 2)
  if spec.photometric:
    penalty = penalty + jnp.mean(delta[:, NUM_FACTORS:] ** 2)
  return Transforms(thetas, photometric), named, penalty


def generate_thetas(phi, spec: GeneratorSpec, noise, feature=None):
  """The affine part of `generate_transforms`: affines [K, 2, 3], named factors, penalty."""
  transforms, named, penalty = generate_transforms(phi, spec, noise, feature)
  return transforms.theta, named, penalty


def learned_views(phi, spec: GeneratorSpec, image: jax.Array, noise, feature=None,
                  source: views_lib.Source | None = None):
  """View 0 = `image` [S, S, 3]; views 1..K made by G_phi from `source` (default: `image`),
  whose centred square is the generator's unit frame. Returns ([K+1, S, S, 3], penalty)."""
  transforms, _, penalty = generate_transforms(phi, spec, noise, feature)
  return jnp.concatenate([image[None], apply_transforms(transforms, image, source)],
                         axis=0), penalty


def adjust_photometric(view: jax.Array, factors: jax.Array) -> jax.Array:
  """One view [S, S, 3] in [0, 1] under (brightness, contrast, saturation, gamma, blur): blur,
  gamma, saturation, contrast, then brightness, clipped to [0, 1]."""
  brightness, contrast, saturation, gamma, blur = factors
  box = jax.lax.reduce_window(jnp.pad(view, ((1, 1), (1, 1), (0, 0)), mode="edge"), 0.0,
                              jax.lax.add, (3, 3, 1), (1, 1, 1), "VALID") / 9.0
  x = (1 - blur) * view + blur * box
  x = jnp.maximum(x, 1e-4) ** gamma  # no infinite slope at 0
  grey = x @ jnp.asarray([0.299, 0.587, 0.114], x.dtype)
  x = grey[..., None] + saturation * (x - grey[..., None])
  mean = jnp.mean(x)
  x = mean + contrast * (x - mean) + brightness
  return jnp.clip(x, 0.0, 1.0)


def apply_transforms(transforms: Transforms, image: jax.Array,
                     source: views_lib.Source | None = None) -> jax.Array:
  """The views [K, S, S, 3] the transforms make of `source` (default: `image`)."""
  out = warp_views(transforms.theta, image, source)
  if transforms.photometric is None:
    return out
  return jax.vmap(adjust_photometric)(out, transforms.photometric.astype(out.dtype))


def warp_views(thetas: jax.Array, image: jax.Array, source: views_lib.Source | None = None):
  """The views [K, S, S, 3] that affines [K, 2, 3] cut from `source` (default: `image`)."""
  if source is None:  # the image itself: its whole extent, no canvas
    warp = lambda t: views_lib.affine_warp(image, t)
  else:
    warp = lambda t: views_lib.affine_warp(source.pixels, t, image.shape[0], source.extent)
  return jax.vmap(warp)(thetas).astype(image.dtype)

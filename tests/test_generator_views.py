"""The augmentation generator at initialisation, the affine warp, and the AugMix views.

The generator is meant to start as TPT's RandomResizedCrop(scale (0.08, 1), ratio (3/4, 4/3)) +
horizontal flip (docs/METHOD.md). Its transforms are read here from the affine matrices
themselves, not from the generator's own named factors: the crop a view shows is what the warp
samples, |det| of the linear part is the crop's area fraction and |theta_00| / theta_11 its
aspect ratio (with rotation and shear at 0).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from metatpt_jax import augmix, metatpt, views
from metatpt_jax import generator as gen
from tests import method_helpers as h

NUM_DRAWS = 20_000
# Sampling error of an empirical quantile of 20k draws is ~0.005 on these ranges, of a fraction
# ~0.0035 (binomial sd at p = 1/2). Bounds below are >= 5 sd unless said otherwise.
FLIP_FRACTION_ATOL = 0.02
SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


@functools.partial(jax.jit, static_argnums=1)
def _generator_thetas(phi, spec, noise, feature):
  return gen.generate_thetas(phi, spec, noise, feature)


@pytest.fixture(scope="module")
def init_draws():
  """(thetas [N, 2, 3], named factors, penalty) of an initial generator, as NumPy."""
  spec = metatpt.MetaTPTSpec()
  phi = h.init_phi(spec)
  noise = gen.sample_noise(jax.random.key(0), NUM_DRAWS)
  feature = jax.random.normal(jax.random.key(1), (h.TEST_ARCH.embed_dim,))
  thetas, named, penalty = _generator_thetas(phi, spec.generator, noise, feature)
  return np.asarray(thetas, np.float64), jax.tree.map(np.asarray, named), float(penalty)


@pytest.fixture(scope="module")
def rrc_draws():
  """[N, 2, 3] thetas of views.random_resized_crop_theta (TPT's crops), as NumPy."""
  keys = jax.random.split(jax.random.key(2), NUM_DRAWS)
  return np.asarray(jax.jit(jax.vmap(views.random_resized_crop_theta))(keys), np.float64)


def _area(thetas):
  return np.abs(np.linalg.det(thetas[:, :, :2]))


def _ratio(thetas):
  return np.abs(thetas[:, 0, 0]) / np.abs(thetas[:, 1, 1])


# ------------------------------------------------------------------ generator at init
def test_init_has_no_rotation_or_shear(init_draws):
  thetas, named, penalty = init_draws
  assert np.all(named["rotation"] == 0) and np.all(named["shear"] == 0)
  # ... and so the affines are exactly axis-aligned crops.
  assert np.all(thetas[:, 0, 1] == 0) and np.all(thetas[:, 1, 0] == 0)
  assert penalty == 0.0  # the zero-initialised output layer: no deviation from the base


def test_init_flips_half_the_views(init_draws):
  thetas, _, _ = init_draws
  flipped = np.mean(thetas[:, 0, 0] < 0)
  assert abs(flipped - 0.5) < FLIP_FRACTION_ATOL, flipped


def test_init_flip_is_a_pure_mirror(init_draws):
  # A flip must mirror the crop, not also squeeze it: |theta_00| is the crop's half-width, the
  # same whether flipped or not. (A soft flip tanh(k z / 2) with z ~ N(0, 1) scales the x axis
  # by |flip| < 1 for every draw; for ~23% of draws by < 0.9.)
  thetas, named, _ = init_draws
  width = np.sqrt(named["area"] * named["ratio"])  # the crop's half-width before the flip
  squeeze = np.abs(thetas[:, 0, 0]) / width
  worst = np.argmin(squeeze)
  assert np.mean(squeeze < 0.99) == 0.0, (
      f"{np.mean(squeeze < 0.9):.1%} of initial views are squeezed horizontally by > 10% (worst: "
      f"x scaled by {squeeze[worst]:.1e}, flip factor {named['flip'][worst]:.1e})")


def test_init_area_range_matches_random_resized_crop(init_draws, rrc_draws):
  area, rrc_area = _area(init_draws[0]), _area(rrc_draws)
  # Both must span TPT's scale range: nothing smaller than 8% of the image, nothing larger
  # than the image; 20k uniform draws come within ~5e-5 of each end (0.005 leaves room).
  for name, a in (("generator", area), ("random_resized_crop", rrc_area)):
    assert a.min() >= SCALE[0] - 1e-6 and a.max() <= SCALE[1] + 1e-6, (name, a.min(), a.max())
    assert a.min() < SCALE[0] + 0.005 and a.max() > SCALE[1] - 0.05, (name, a.min(), a.max())
  # Quantiles agree up to the one known difference: torchvision redraws a crop that does not fit
  # (area * ratio > 1), the generator clips its side to the frame instead, which keeps more
  # large crops (measured: quantiles up to 0.097 higher, at the 80th percentile). 0.12 allows
  # that and sampling error, and still catches e.g. area uniform on (0.3, 1) (0.2 off at q=0.1).
  q = np.linspace(0.05, 0.95, 19)
  diff = np.quantile(area, q) - np.quantile(rrc_area, q)
  assert np.abs(diff).max() < 0.12, dict(zip(q.round(2), diff.round(3)))


def test_init_aspect_ratio_range_matches_random_resized_crop(init_draws, rrc_draws):
  ratio, rrc_ratio = _ratio(init_draws[0]), _ratio(rrc_draws)
  for name, r in (("generator", ratio), ("random_resized_crop", rrc_ratio)):
    assert r.min() >= RATIO[0] - 1e-6 and r.max() <= RATIO[1] + 1e-6, (name, r.min(), r.max())
    assert r.min() < RATIO[0] + 0.01 and r.max() > RATIO[1] - 0.01, (name, r.min(), r.max())
  # log-ratio is uniform in both (clipping only pulls a few towards 1): measured <= 0.01 apart.
  q = np.linspace(0.05, 0.95, 19)
  diff = np.quantile(np.log(ratio), q) - np.quantile(np.log(rrc_ratio), q)
  assert np.abs(diff).max() < 0.03, dict(zip(q.round(2), diff.round(3)))


def test_init_crops_stay_inside_the_frame(init_draws):
  thetas = init_draws[0]
  corners = np.array([[u, v, 1.0] for u in (-1, 1) for v in (-1, 1)])  # output frame corners
  sampled = np.einsum("nij,cj->nci", thetas, corners)  # where each corner samples the input
  assert np.abs(sampled).max() <= 1 + 1e-6, np.abs(sampled).max()  # fp32 rounding


# ------------------------------------------------------------------ the warp
@pytest.mark.parametrize("size", [16, 32])
def test_identity_and_horizontal_flip_are_exact(size):
  # Power-of-two sizes: the pixel-centre grid (2i + 1) / n - 1 is exact in binary floating point,
  # so the warp lands on pixel centres and bilinear weights are exactly 0 and 1.
  image = jax.random.uniform(jax.random.key(size), (size, size, 3))
  np.testing.assert_array_equal(views.affine_warp(image, views.IDENTITY), image)
  mirror = jnp.array([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
  np.testing.assert_array_equal(views.affine_warp(image, mirror), image[:, ::-1])
  np.testing.assert_array_equal(views.tpt_views(image, jax.random.key(0), 4)[0], image)


def test_identity_is_exact_to_fp32_rounding_at_224():
  # At 224 the grid (2i + 1) / 224 is rounded (fp32 ulp ~1.5e-5 at 224 pixels), so samples land
  # ~1e-5 pixels off centre: measured error 2.9e-5, a hundredth of one 8-bit level (3.9e-3).
  image = jax.random.uniform(jax.random.key(0), (224, 224, 3))
  np.testing.assert_allclose(views.affine_warp(image, views.IDENTITY), image, atol=1e-4)
  mirror = jnp.array([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
  np.testing.assert_allclose(views.affine_warp(image, mirror), image[:, ::-1], atol=1e-4)


def test_warp_gradient_matches_central_differences():
  # float64: FD noise ~eps^2 + 1e-16 / eps. Bilinear sampling is only piecewise smooth (kinks
  # where a sample crosses a pixel edge); a step of 1e-7 in theta moves samples by ~1e-6 pixels,
  # so none of the 256 samples crosses an edge (probability ~1e-4) and FD is exact to ~1e-8.
  eps = 1e-7
  with jax.enable_x64(True):
    image = jax.random.uniform(jax.random.key(0), (16, 16, 3), jnp.float64)
    weights = jax.random.normal(jax.random.key(1), (16, 16, 3), jnp.float64)
    c, s = np.cos(0.3), np.sin(0.3)  # a rotated, sheared, shifted crop well inside the frame
    theta = jnp.array([[0.5 * c, -0.4 * s + 0.05, 0.1], [0.5 * s, 0.4 * c, -0.15]], jnp.float64)
    loss = jax.jit(lambda img, t: jnp.sum(weights * views.affine_warp(img, t)))
    grad = np.asarray(jax.grad(loss, argnums=1)(image, theta))
    fd = np.zeros((2, 3))
    for i in range(2):
      for j in range(3):
        step = jnp.zeros((2, 3), jnp.float64).at[i, j].set(eps)
        fd[i, j] = (loss(image, theta + step) - loss(image, theta - step)) / (2 * eps)
    assert np.abs(grad).min() > 1e-3  # every entry moves the view: the check is not vacuous
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)
    # Both arguments, forward and reverse mode (the image enters linearly).
    check_grads(loss, (image, theta), order=1, modes=("fwd", "rev"), eps=eps, atol=1e-6,
                rtol=1e-6)


# ------------------------------------------------------------------ AugMix views
@pytest.mark.parametrize("kind", ["random", "black", "white", "grey"])
def test_augmix_views_are_finite_images(kind):
  size, n_views = 16, 16
  image = {"random": jax.random.uniform(jax.random.key(5), (size, size, 3)),
           "black": jnp.zeros((size, size, 3)), "white": jnp.ones((size, size, 3)),
           "grey": jnp.full((size, size, 3), 0.5, jnp.float32)}[kind]
  out = np.asarray(_augmix_views(image, jax.random.key(6), n_views))
  assert out.shape == (n_views, size, size, 3) and out.dtype == np.float32
  assert np.isfinite(out).all()
  # Convex mixtures of [0, 1] images, up to fp32 rounding of the Dirichlet weights' sum.
  assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6, (out.min(), out.max())
  np.testing.assert_array_equal(out[0], image)
  if kind == "random":  # the augmentations do something
    assert np.abs(out[1:] - out[:1]).max() > 0.1


@functools.partial(jax.jit, static_argnums=2)
def _augmix_views(image, key, n_views):
  return augmix.augmix_views(image, key, n_views)


@pytest.mark.parametrize("kind", ["flat", "random"])
def test_augmix_equalize_matches_pil(kind):
  # AugMix (and so TPT) equalises with PIL's ImageOps.equalize: an exclusive-CDF lookup table
  # that leaves a single-level channel unchanged (a flat grey image must not turn white).
  from PIL import Image, ImageOps
  rng = np.random.default_rng(0)
  image = (np.full((16, 16, 3), 100, np.uint8) if kind == "flat"
           else (rng.beta(2, 5, size=(16, 16, 3)) * 255).astype(np.uint8))
  pil = np.asarray(ImageOps.equalize(Image.fromarray(image)), np.float32) / 255
  ours = np.asarray(augmix.equalize(jnp.asarray(image, jnp.float32) / 255, None))
  # Both are integer levels / 255: any real difference is >= 1 / 255; 1e-6 absorbs rounding.
  np.testing.assert_allclose(ours, pil, atol=1e-6)


def _pil_parity(ours_fn, pil_fn, image):
  """(largest difference in levels, share of values that differ) between our op on the image's
  levels and Pillow's op on the PIL image."""
  from PIL import Image
  ours = np.round(np.asarray(ours_fn(jnp.asarray(image, jnp.float32) / 255)) * 255)
  pil = np.asarray(pil_fn(Image.fromarray(image)), np.float64)
  diff = np.abs(ours - pil)
  return diff.max(), (diff > 0).mean()


def _levels_image(kind, seed=0):
  rng = np.random.default_rng(seed)
  shape = (24, 30, 3)  # not square: width and height are not mixed up
  scale = rng.uniform(size=shape) if kind == "uniform" else rng.beta(2, 5, size=shape)
  return (scale * 255).astype(np.uint8)


@pytest.mark.parametrize("kind", ["uniform", "beta"])
def test_augmix_point_operations_match_pillow(kind):
  """TPT's augmix_ops call ImageOps on uint8 PIL images: posterize and solarize exactly;
  autocontrast within one level (Pillow's table is built in double, ours in float32)."""
  from PIL import ImageOps
  image = _levels_image(kind)
  assert _pil_parity(augmix.posterize, lambda p: ImageOps.posterize(p, 4), image) == (0, 0)
  for threshold in (231, 250, 256):
    assert _pil_parity(lambda x, t=threshold: augmix.solarize(x, t),
                       lambda p, t=threshold: ImageOps.solarize(p, t), image) == (0, 0)
  worst, share = _pil_parity(augmix.autocontrast, ImageOps.autocontrast, image)
  assert worst <= 1 and share <= 0.01, (worst, share)


@pytest.mark.parametrize("op", ["rotate", "shear_x", "shear_y", "translate_x", "translate_y"])
def test_augmix_geometric_operations_match_pillow(op):
  """Pillow's bilinear affine transform: sampled at pixel centres, black outside the frame,
  shear about the top-left corner, rotation about the centre, truncated to uint8. Integer
  translations match exactly; the others within one level where double and float32 truncate
  a whole-level mix differently (measured well under 2 % of values)."""
  from PIL import Image
  image = _levels_image("uniform", seed=1)
  w, h = image.shape[1], image.shape[0]
  bilinear = Image.Resampling.BILINEAR
  cases = {
      "rotate": [(lambda x, a=a: augmix.rotate(x, a),
                  lambda p, a=a: p.rotate(a, resample=bilinear)) for a in (1, -2, 17)],
      "shear_x": [(lambda x, m=m: augmix.shear(x, 0, m),
                   lambda p, m=m: p.transform((w, h), Image.Transform.AFFINE,
                                              (1, m, 0, 0, 1, 0), resample=bilinear))
                  for m in (0.0297, -0.012, 0.3)],
      "shear_y": [(lambda x, m=m: augmix.shear(x, 1, m),
                   lambda p, m=m: p.transform((w, h), Image.Transform.AFFINE,
                                              (1, 0, 0, m, 1, 0), resample=bilinear))
                  for m in (0.0297, -0.012, 0.3)],
      "translate_x": [(lambda x, t=t: augmix.translate(x, 0, t),
                       lambda p, t=t: p.transform((w, h), Image.Transform.AFFINE,
                                                  (1, 0, t, 0, 1, 0), resample=bilinear))
                      for t in (3, -5)],
      "translate_y": [(lambda x, t=t: augmix.translate(x, 1, t),
                       lambda p, t=t: p.transform((w, h), Image.Transform.AFFINE,
                                                  (1, 0, 0, 0, 1, t), resample=bilinear))
                      for t in (3, -5)],
  }[op]
  for ours_fn, pil_fn in cases:
    worst, share = _pil_parity(ours_fn, pil_fn, image)
    if op.startswith("translate"):
      assert (worst, share) == (0, 0)
    else:
      assert worst <= 1 and share <= 0.02, (op, worst, share)
  # black outside the frame, not the border repeated (the shift reads past the right edge)
  moved = np.asarray(augmix.translate(jnp.asarray(image, jnp.float32) / 255, 0, 5))
  assert not moved[:, -5:].any() and moved[:, :-5].any()

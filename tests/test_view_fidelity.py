"""TPT's views cut from the full image, as the public TPT code cuts them with torchvision.

The public code applies `RandomResizedCrop(224)` + `RandomHorizontalFlip` to the decoded PIL image
(view 0 alone is `Resize(224, BICUBIC)` + `CenterCrop(224)`). For a PIL image torchvision's
`resized_crop` is `img.crop(box)` then `img.resize(size, BILINEAR)`: Pillow's antialiased
triangle filter. torchvision itself does not import beside the pinned CPU torch here, so the
reference is Pillow for the pixels and an independent transcription of torchvision's
`RandomResizedCrop.get_params` (drawing with torch's RNG, as torchvision does) for the boxes.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image

from metatpt_jax import tpt, views
from metatpt_jax.data import benchmarks

# Pillow rounds to uint8 after each of its two passes; we resample in float. Measured on random
# uint8 images (the hardest case) for boxes from 10x12 px to whole 500x375 images at 32 and 224
# px: max abs difference 0.994 grey levels, mean 0.28-0.31. A missing antialias, a half-pixel
# shift or weights that leak across the crop edge each cost many grey levels.
PIXEL_MAX = 1.0 / 255
PIXEL_MEAN = 0.35 / 255


def _canvas(image: np.ndarray, side: int) -> views.Source:
  h, w = image.shape[:2]
  canvas = np.zeros((side, side, 3), np.float32)
  canvas[:h, :w] = image / 255.0
  return views.Source(jnp.asarray(canvas), jnp.array([h, w], jnp.int32))


@functools.partial(jax.jit, static_argnums=(2,))
def _crop(source, box, size, flip):
  return views.crop_resize(source, box, size, flip)


def _pil_crop(image: np.ndarray, box, size: int, flip: bool) -> np.ndarray:
  top, left, h, w = (int(v) for v in box)
  out = Image.fromarray(image).crop((left, top, left + w, top + h)).resize((size, size),
                                                                           Image.BILINEAR)
  if flip:
    out = out.transpose(Image.FLIP_LEFT_RIGHT)
  return np.asarray(out, np.float32) / 255.0


@pytest.mark.parametrize("shape,size", [((50, 75), 32), ((375, 500), 224), ((90, 40), 32)])
def test_crop_pixels_match_pil(shape, size):
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
  h, w = shape
  source = _canvas(image, max(shape) + 7)  # padding beyond the image must never be read
  boxes = [(0, 0, h, w), (3, 5, h // 3, w // 4), (h - 10, w - 12, 10, 12), (1, 2, h - 2, w // 2)]
  for box in boxes:
    for flip in (False, True):
      ours = np.asarray(_crop(source, jnp.array(box), size, flip))
      ref = _pil_crop(image, box, size, flip)
      err = np.abs(ours - ref)
      assert err.max() <= PIXEL_MAX + 1e-6 and err.mean() <= PIXEL_MEAN, (box, flip, err.max())


# ------------------------------------------------------------------ crop boxes
def torchvision_get_params(height, width, generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """An independent transcription of torchvision's `RandomResizedCrop.get_params`."""
  area = height * width
  log_ratio = torch.log(torch.tensor(ratio))
  for _ in range(10):
    target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
    aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1],
                                              generator=generator).item())
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      i = torch.randint(0, height - h + 1, size=(1,), generator=generator).item()
      j = torch.randint(0, width - w + 1, size=(1,), generator=generator).item()
      return i, j, h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def _box_stats(boxes, height, width):
  boxes = np.asarray(boxes, np.float64)
  top, left, h, w = boxes.T
  return dict(area=h * w / (height * width), log_aspect=np.log(w / h),
              center_x=(left + w / 2) / width, center_y=(top + h / 2) / height,
              full=(h == height) & (w == width))


def _ks(a, b):
  """Two-sample Kolmogorov-Smirnov statistic."""
  grid = np.sort(np.concatenate([a, b]))
  cdf = lambda x: np.searchsorted(np.sort(x), grid, side="right") / len(x)
  return float(np.abs(cdf(a) - cdf(b)).max())


@pytest.mark.parametrize("height,width", [(375, 500), (500, 333), (40, 300)])
def test_crop_box_statistics_match_torchvision(height, width):
  n = 4000
  keys = jax.random.split(jax.random.key(0), n)
  extent = jnp.array([height, width], jnp.int32)
  ours = np.asarray(jax.jit(jax.vmap(lambda k: views.random_resized_crop_box(k, extent)))(keys))
  gen = torch.Generator().manual_seed(0)
  theirs = [torchvision_get_params(height, width, gen) for _ in range(n)]
  # Every box lies inside the image, with positive integer sides.
  top, left, h, w = ours.T
  assert (h > 0).all() and (w > 0).all() and (top >= 0).all() and (left >= 0).all()
  assert (top + h <= height).all() and (left + w <= width).all()
  a, b = _box_stats(ours, height, width), _box_stats(theirs, height, width)
  # KS critical value at alpha = 0.001 for two samples of 4000: 1.95 * sqrt(2 / 4000) = 0.044.
  for name in ("area", "log_aspect", "center_x", "center_y"):
    assert _ks(a[name], b[name]) < 0.044, (name, _ks(a[name], b[name]))
  # The fallback (whole image or the clamped central crop) is taken as often.
  assert abs(a["full"].mean() - b["full"].mean()) < 0.02


# ------------------------------------------------------------------ TPT end to end
def _torchvision_views(image: np.ndarray, size: int, boxes, flips) -> np.ndarray:
  """The public TPT code's views of a PIL image for given crop boxes: view 0 by Resize(size,
  BICUBIC) + CenterCrop(size), views 1.. by resized_crop (bilinear) + flip, all ToTensor'ed."""
  pil = Image.fromarray(image)
  w, h = pil.size
  short, long = min(w, h), max(w, h)
  new_long = int(size * long / short)
  resized = pil.resize((size, new_long) if w <= h else (new_long, size), Image.BICUBIC)
  rw, rh = resized.size
  top, left = int(round((rh - size) / 2.0)), int(round((rw - size) / 2.0))
  view0 = np.asarray(resized.crop((left, top, left + size, top + size)), np.float32) / 255.0
  crops = [_pil_crop(image, b, size, bool(f)) for b, f in zip(boxes, flips)]
  return np.stack([view0] + crops)


def test_tpt_on_full_image_matches_torch_on_pil_views(tmp_path):
  import transformers

  from metatpt_jax.bench.torch_tpt import TorchTPT
  from metatpt_jax.clip import checkpoint
  from metatpt_jax.clip.tokenizer import default_tokenizer
  from tests import method_helpers as h
  frozen, mspec = h.tiny_frozen(seed=0, logit_scale=np.log(10.0))
  size = mspec.arch.vision.image_size
  # A smooth non-square picture (random pixels would make every crop look alike).
  yy, xx = np.mgrid[0:37, 0:58]
  image = np.stack([128 + 100 * np.sin(xx / 5.0), 128 + 100 * np.cos(yy / 4.0),
                    (xx * 4 + yy * 3) % 256], -1).clip(0, 255).astype(np.uint8)
  inputs = benchmarks.view_inputs(image, size, canvas_size=64)
  assert inputs["canvas"].shape == (64, 64, 3) and tuple(inputs["extent"]) == (37, 58)
  view0 = jnp.asarray(inputs["image"], jnp.float32) / 255
  source = views.Source(jnp.asarray(inputs["canvas"], jnp.float32) / 255,
                        jnp.asarray(inputs["extent"]))
  spec = tpt.TPTSpec(n_views=64, steps=2)
  key = jax.random.key(3)
  run = jax.jit(tpt.tpt_adapt_one_sample, static_argnums=(3, 4))
  _, metrics = run(frozen, view0, key, spec, mspec, source)
  ours_ctx = None
  feats_fn = jax.jit(lambda f, v: tpt.tune_prompt_on_features(
      f, jax.lax.stop_gradient(tpt.encode_images(f, v, mspec)), spec, mspec))
  # The same boxes and flips, drawn from the sample's per-view keys.
  params = jax.vmap(lambda k: views.tpt_crop_params(k, source.extent))(
      jax.random.split(key, spec.n_views - 1))
  boxes, flips = np.asarray(params[0]), np.asarray(params[1])
  pixels = _torchvision_views(image, size, boxes, flips)
  ours_views = np.asarray(spec.make_views(view0, key, source))
  np.testing.assert_allclose(ours_views, pixels, atol=PIXEL_MAX + 1e-6)  # the pixels themselves
  ours_ctx, _ = feats_fn(frozen, jnp.asarray(ours_views))
  directory = checkpoint.save_hf(frozen.params, mspec.arch, tmp_path / "hf")
  model = transformers.CLIPModel.from_pretrained(directory, attn_implementation="eager").eval()
  texts = [f"X X X X {name}." for name in h.CLASS_NAMES]
  token_ids = default_tokenizer()(texts, context_length=mspec.arch.text.context_length)
  ref = TorchTPT(model, np.asarray(token_ids), frozen.ctx_init).adapt(pixels, steps=spec.steps)
  # Selection is decided on the views' entropies; the uint8 rounding of Pillow's views moves
  # features by ~1e-3, far less than the entropy gaps between kept and dropped views here.
  # Compared as a set: the loss averages over the kept views, and their order within the set
  # can swap on near-ties that CPUs round differently.
  np.testing.assert_array_equal(np.sort(metrics["selected"]), np.sort(ref["selected"]))
  moved = np.abs(ref["ctx"] - np.asarray(frozen.ctx_init)).max()
  err = np.abs(np.asarray(ours_ctx) - ref["ctx"]).max()
  print(f"full-image TPT vs torch on PIL views: context moved {moved:.2e}, max abs error {err:.2e}")
  assert moved > 5e-3
  # Two AdamW steps move each entry by ~lr = 5e-3; the views differ by < 1 grey level, so the
  # contexts agree to well under a tenth of one step.
  assert err < 5e-4


def test_view_memory_grows_with_the_canvas():
  from metatpt_jax.bench import view_memory
  small = view_memory.measure(image_size=16, n_views=8, canvas=32)
  large = view_memory.measure(image_size=16, n_views=8, canvas=128)
  assert 0 < small["extra_mib"] < large["extra_mib"]

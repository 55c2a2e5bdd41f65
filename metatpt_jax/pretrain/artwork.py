"""Pretraining v3 on emoji artwork: source-style pictures composed into varied images, each with
a caption that names the class and how the picture looks.

Data (`load_artwork_pairs`): the source styles' pictures (premultiplied RGBA, so they can go over
any background) labelled in world v3's class universe, names as CLDR names. Each training image
(`compose`, on the device) draws one described transformation (`DESCRIBED`) and its caption is
the template that names it, v2's lesson: context words that describe the image are what TPT's
context tuning can pull. The picture is placed at a random scale and place over a random
background (white, a colour, a gradient, or a dimmed collage of four other pictures: clutter of
objects that are not the one named) with mild colour jitter, so scale, place and background carry
no class information. Silhouettes and outlines are made from the picture's own alpha and
colour boundaries, drawn as strokes of one width: the look of line art and high-contrast icons,
named in words, never the held-out artists' drawings themselves.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from metatpt_jax import views
from metatpt_jax.pretrain.pairs import PairData, trimmed_captions

DESCRIBED = (
    ("none", "an emoji of {}."),
    ("greyscale", "a black and white emoji of {}."),
    ("silhouette", "a black silhouette of {}."),
    ("outline", "an outline drawing of {}."),
    ("small", "a small emoji of {}."),
)
DESCRIBED_TEMPLATES = tuple(t for _, t in DESCRIBED)
EVAL_TEMPLATES = ("an emoji of {}.",)


def compose_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      scale=(0.6, 1.0),         # the picture's side as a fraction of the frame
      small_scale=(0.3, 0.5),   # ... for the "small" transformation
      # white, a random colour, a random gradient[, a dimmed collage of four other pictures]
      background_probs=(0.4, 0.3, 0.3),
      collage_contrast=(0.2, 0.7),  # how far the collage is dimmed toward white
      brightness=0.1, contrast=(0.7, 1.2),  # mild jitter of the composed image
      edge_threshold=(0.2, 0.4),   # colour step that draws a line (random per image)
      thick_prob=0.2,           # lines 2 px wide instead of 1 with this probability
  ))


def load_artwork_pairs(style_names, weights, image_size: int, make_captions,
                       cache_dir: str | None = None, max_per_style: int = 0,
                       seed: int = 0) -> PairData:
  """The source styles' pictures (images: premultiplied RGBA uint8 [N, S, S, 4]) in world v3's
  class universe, each style drawn with its weight's share of a batch."""
  from metatpt_jax.data.artwork import styles, world
  catalog = styles.load_catalog(cache_dir)
  universe = world.class_universe(cache_dir)
  label_of = {k: i for i, k in enumerate(universe)}
  weights = np.asarray(weights, np.float64) / np.sum(weights)
  images, labels, probs = [], [], []
  for name, weight in zip(style_names, weights):
    style_set = styles.load_style(name, image_size, cache_dir=cache_dir, catalog=catalog)
    keep = np.array([i for i, k in enumerate(style_set.keys) if k in label_of])
    if max_per_style:
      keep = np.random.default_rng(seed).permutation(keep)[:max_per_style]
    images.append(style_set.rgba[keep])
    labels.append([label_of[style_set.keys[i]] for i in keep])
    probs.append(np.full(len(keep), weight / len(keep)))
  names = [catalog.classes[k].name for k in universe]
  return PairData(np.concatenate(images), np.concatenate(labels).astype(np.int32),
                  np.concatenate(probs), names, trimmed_captions(make_captions(names)))


def _edges(rgba):
  """Colour and alpha steps [S, S] of premultiplied RGBA: the largest channel difference to the
  right and lower neighbour."""
  dy = jnp.abs(jnp.diff(rgba, axis=0, append=rgba[-1:])).max(-1)
  dx = jnp.abs(jnp.diff(rgba, axis=1, append=rgba[:, -1:])).max(-1)
  return jnp.maximum(dx, dy)


def _lines(rgba, key, cfg):
  """Where a pen would draw [S, S] in {0, 1}: every colour or alpha step above a random
  threshold, as uniform strokes 1 or 2 px wide (line art draws lines of one width whatever the
  colours' contrast, so the edge strength itself is thresholded, never used as opacity)."""
  k_t, k_w = jax.random.split(key)
  threshold = jax.random.uniform(k_t, (), minval=cfg.edge_threshold[0],
                                 maxval=cfg.edge_threshold[1])
  line = (_edges(rgba) > threshold).astype(rgba.dtype)
  thick = jax.lax.reduce_window(line, 0.0, jax.lax.max, (2, 2), (1, 1), "SAME")
  return jnp.where(jax.random.bernoulli(k_w, cfg.thick_prob), thick, line)


def _looks(rgba, op, key, cfg):
  """The picture as transformation `op` draws it (premultiplied RGBA in [0, 1]): as drawn, in
  grey, as a black silhouette whose inner colour boundaries show as white lines (the look of
  high-contrast icons), as black strokes along every boundary (line art), or as drawn (small).
  The strokes sit on the pixel before each step (one-sided differences), so the silhouette's
  outer contour also shows a 1-px white line on its right and lower side, where that pixel is
  opaque: the checkpoint of world v3 was trained with it."""
  alpha = rgba[..., 3:]
  grey = jnp.broadcast_to(rgba[..., :3] @ jnp.array([0.299, 0.587, 0.114])[:, None],
                          rgba[..., :3].shape)
  line = _lines(rgba, key, cfg)[..., None]
  inner = line * (alpha > 0.99)
  black = jnp.zeros_like(grey)
  return jax.lax.switch(op, (
      lambda: rgba,
      lambda: jnp.concatenate([grey, alpha], -1),
      lambda: jnp.concatenate([jnp.broadcast_to(inner * alpha, grey.shape), alpha], -1),
      lambda: jnp.concatenate([black, line], -1),
      lambda: rgba))


def _collage(others, key, cfg):
  """A 2x2 collage [S, S, 3] of four other pictures (premultiplied RGBA [4, S, S, 4]) over
  white, each at half size, dimmed toward white by a random contrast: clutter made of objects
  that are not the one named."""
  size = others.shape[1]
  tiles = others[..., :3] + (1 - others[..., 3:])
  tiles = tiles.reshape(4, size // 2, 2, size // 2, 2, 3).mean((2, 4))
  collage = jnp.concatenate([jnp.concatenate(tiles[:2], 1), jnp.concatenate(tiles[2:], 1)], 0)
  contrast = jax.random.uniform(key, (), minval=cfg.collage_contrast[0],
                                maxval=cfg.collage_contrast[1])
  return 1 - contrast * (1 - collage)


def _background(key, size, cfg, others=None):
  k_kind, k_a, k_b, k_dir = jax.random.split(key, 4)
  kind = jax.random.choice(k_kind, len(cfg.background_probs), p=jnp.asarray(cfg.background_probs))
  a, b = jax.random.uniform(k_a, (3,)), jax.random.uniform(k_b, (3,))
  ramp = jnp.linspace(0.0, 1.0, size)
  ramp = jnp.where(jax.random.bernoulli(k_dir), ramp[:, None], ramp[None, :])[..., None]
  gradient = a * (1 - ramp) + b * ramp
  solid = jnp.broadcast_to(a, (size, size, 3))
  white = jnp.ones((size, size, 3))
  collage = white if others is None else _collage(others, k_b, cfg)
  return jnp.select([kind == 0, kind == 1, kind == 2], [white, solid, gradient], collage)


def uses_collage(cfg) -> bool:
  """Whether backgrounds may be collages of other pictures (then `compose` needs `others`)."""
  return len(cfg.background_probs) == 4 and cfg.background_probs[3] > 0


def compose(rgba: jax.Array, key: jax.Array, op: jax.Array, cfg,
            others: jax.Array | None = None) -> jax.Array:
  """One training image [S, S, 3] in [0, 1] from premultiplied RGBA [S, S, 4] in [0, 1]:
  transformation `op` (an index into DESCRIBED), a random scale and place, a background
  (`others`: four other pictures [4, S, S, 4] for the collage background, when it is used)."""
  size = rgba.shape[0]
  k_scale, k_place, k_bg, k_jit, k_look = jax.random.split(key, 5)
  lo, hi = jnp.where(op == 4, jnp.asarray(cfg.small_scale), jnp.asarray(cfg.scale))
  scale = jax.random.uniform(k_scale, (), minval=lo, maxval=hi)
  center = (1 - scale) * jax.random.uniform(k_place, (2,), minval=-1.0, maxval=1.0)
  theta = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]) / scale
  theta = theta.at[:, 2].set(-center / scale)
  grid = (jnp.arange(size, dtype=rgba.dtype) * 2 + 1) / size - 1
  gu, gv = jnp.meshgrid(grid, grid, indexing="xy")
  inside = (jnp.abs(jnp.stack([gu, gv], -1) - center) <= scale).all(-1)[..., None]
  placed = jnp.where(inside, views.affine_warp(_looks(rgba, op, k_look, cfg), theta), 0.0)
  image = placed[..., :3] + (1 - placed[..., 3:]) * _background(k_bg, size, cfg, others)
  k_b, k_c = jax.random.split(k_jit)
  shift = jax.random.uniform(k_b, (), minval=-cfg.brightness, maxval=cfg.brightness)
  factor = jax.random.uniform(k_c, (), minval=cfg.contrast[0], maxval=cfg.contrast[1])
  return jnp.clip((image - image.mean()) * factor + image.mean() + shift, 0.0, 1.0)

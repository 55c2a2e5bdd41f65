"""World v3: emoji artwork by several artists, test-time adaptation under a natural shift of style.

Source styles are for pretraining only; held-out styles (other artists, line art, silhouettes, an
outline font) make the test domains and are never seen in pretraining.

Classes: every class with a picture in every source style (`class_universe`: 1,586 base emoji at
emojibase 17.0.0), named by its CLDR name; the classifier always covers all of them.

Development and test share no image: a fixed third of the classes, stratified by subgroup
(`dev_classes`), are the development classes; a held-out style's pictures of them are its
development images ("dev" split), its pictures of the others its test images ("test"). Classes a
style draws identically (`styles.indistinguishable_groups`: colour-only variants in line art) are
dropped from that style's domains: no method could tell them apart.

Renderings: "plain" (each picture framed on white) and "cluttered" (the picture at 35-55 % of the
side, at a random place, over a dimmed collage of four other pictures of the same style: the
object small in a busy scene, where TPT's crops matter). Skin-tone variants are further pictures
of their base class, so a domain may hold several pictures of one class (counted in
`describe`).

Class subsets: a domain may be evaluated over the first M classes of a fixed order of the
universe (`class_order`: subgroups taken in turn, each in a seeded order), so subsets are nested
and stratified by subgroup; its classifier then covers those M classes and its images are its
split's pictures of them. For a style far from the source styles, M is chosen on the
development split by zero-shot accuracy alone, and the tables say so.
"""
from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from metatpt_jax.data.artwork import render, styles
from metatpt_jax.data.labelled import Domain
from metatpt_jax.errors import UserError

SOURCE_STYLES = ("google", "twemoji", "openmoji_color", "fluent_3d")
HELD_OUT_STYLES = ("fluent_flat", "openmoji_black", "fluent_high_contrast", "symbola")
RENDERINGS = ("plain", "cluttered")
SPLITS = ("dev", "test")
DEV_FRACTION = 1 / 3
SPLIT_SEED = 0        # fixed: the development classes never change with a run's seed


@functools.cache
def class_universe(cache_dir: str | None = None, size: int = 64) -> tuple[str, ...]:
  """Keys of the classes with a picture in every source style, in the catalog's order."""
  catalog = styles.load_catalog(cache_dir)
  have = [set(styles.load_style(s, size, cache_dir=cache_dir, catalog=catalog).keys)
          for s in SOURCE_STYLES]
  return tuple(k for k in catalog.classes if all(k in h for h in have))


def dev_classes(universe, subgroups) -> frozenset:
  """A fixed third of `universe`, stratified by subgroup (`subgroups`: key -> subgroup): within
  each subgroup, every third class of a seeded order (at least one when it has three)."""
  rng = np.random.default_rng(SPLIT_SEED)
  by_subgroup = {}
  for key in universe:
    by_subgroup.setdefault(subgroups[key], []).append(key)
  chosen = set()
  for name in sorted(by_subgroup):
    members = by_subgroup[name]
    order = rng.permutation(len(members))
    chosen.update(members[i] for i in order[:int(round(len(members) * DEV_FRACTION))])
  return frozenset(chosen)


def _cluttered(rgba, index: int, seed: int, size: int) -> np.ndarray:
  """Picture `index` small at a random place over a dimmed 2x2 collage of four others."""
  rng = np.random.default_rng([seed, index])
  others = rng.choice(np.delete(np.arange(len(rgba)), index), 4, replace=False)
  tiles = [render.over(rgba[j], render.WHITE) for j in others]
  collage = np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)
  collage = np.asarray(Image.fromarray(collage).resize((size, size), Image.Resampling.BILINEAR))
  background = 255 - 0.45 * (255 - collage.astype(np.float32))  # dimmed toward white
  side = int(round(size * rng.uniform(0.35, 0.55)))
  small = render.resize_rgba(rgba[index], side)
  y, x = rng.integers(0, size - side + 1, 2)
  out = background.copy()
  out[y:y + side, x:x + side] = render.over(small, background[y:y + side, x:x + side])
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def class_order(universe, subgroups) -> tuple[str, ...]:
  """The universe in a fixed order whose every prefix is stratified by subgroup: the subgroups
  (in a seeded order) give one class each in turn, each subgroup's classes in a seeded order."""
  rng = np.random.default_rng(SPLIT_SEED + 1)
  by_subgroup = {}
  for key in universe:
    by_subgroup.setdefault(subgroups[key], []).append(key)
  queues = [[by_subgroup[name][i] for i in rng.permutation(len(by_subgroup[name]))]
            for name in sorted(by_subgroup)]
  queues = [queues[i] for i in rng.permutation(len(queues))]
  order = []
  while queues:
    order.extend(q.pop(0) for q in queues)
    queues = [q for q in queues if q]
  return tuple(order)


def check_domain(style: str, rendering: str, split: str, num_classes: int | None = None) -> None:
  """Refuses a domain this world does not have (no data read)."""
  if style not in HELD_OUT_STYLES or rendering not in RENDERINGS or split not in SPLITS:
    raise UserError(f"artwork domain {style}:{rendering} ({split}): choose a held-out style of "
                    f"{HELD_OUT_STYLES}, a rendering of {RENDERINGS} and a split of {SPLITS}.")
  if num_classes is not None and num_classes < 2:
    raise UserError(f"artwork domain {style}:{rendering}: a class subset needs at least 2 "
                    f"classes, got {num_classes}.")


def load_domain(style: str, rendering: str = "plain", split: str = "test", *,
                image_size: int = 64, seed: int = 0, cache_dir: str | None = None,
                num_classes: int | None = None) -> Domain:
  """A held-out style's domain: pictures of its `split` classes in `rendering`, labels in the
  class universe's order, every universe class in `class_names`.

  With `num_classes` M, the domain is M-way, as ImageNet-A/-R are 200-way subsets of ImageNet:
  the first M of `class_order` *among the split's classes* (so a development and a test domain
  share neither images nor classes, and both are M-way), in the universe's order, and the
  pictures of those classes."""
  check_domain(style, rendering, split, num_classes)
  catalog = styles.load_catalog(cache_dir)
  universe = class_universe(cache_dir, image_size)
  subgroups = {k: catalog.classes[k].subgroup for k in universe}
  dev = dev_classes(universe, subgroups)
  if num_classes is not None:
    in_split = [k for k in class_order(universe, subgroups) if (k in dev) == (split == "dev")]
    chosen = set(in_split[:num_classes])
    universe = tuple(k for k in universe if k in chosen)
  style_set = styles.load_style(style, image_size, cache_dir=cache_dir, catalog=catalog)
  dropped = {k for group in styles.indistinguishable_groups(style_set) for k in group}
  label_of = {k: i for i, k in enumerate(universe)}
  keep = [i for i, k in enumerate(style_set.keys)
          if k in label_of and k not in dropped and (k in dev) == (split == "dev")]
  if rendering == "plain":
    images = style_set.images[keep]
  else:
    images = np.stack([_cluttered(style_set.rgba, i, seed, image_size) for i in keep])
  labels = np.array([label_of[style_set.keys[i]] for i in keep], np.int32)
  names = [catalog.classes[k].name for k in universe]
  suffix = "" if num_classes is None else f":{num_classes}_classes"
  return Domain(f"artwork:{style}:{rendering}{suffix}", images, labels, names)


def describe(domain: Domain) -> dict:
  """Counts for the docs: images, classes present, pictures per class beyond the first."""
  counts = np.bincount(domain.labels, minlength=len(domain.class_names))
  return dict(images=int(len(domain.labels)), classes=int((counts > 0).sum()),
              repeated_pictures=int(np.maximum(counts - 1, 0).sum()))


def source_domain(split: str = "test", *, image_size: int = 64, cache_dir: str | None = None,
                  num_classes: int | None = None, shots: int = 0, seed: int = 0) -> Domain:
  """The source styles' plain pictures of the classes a held-out domain of `split` (and
  `num_classes`) covers, labelled in that domain's order: the few-shot training set of a prompt
  backbone trained on the source domains only (the domain-generalisation protocol: ImageNet's
  classes in training, its shifted variants at test). shots > 0 keeps that many pictures per
  class (a seeded choice); 0 keeps all (one per style and skin tone)."""
  if split not in SPLITS:
    raise UserError(f"split {split!r}: choose one of {SPLITS}.")
  catalog = styles.load_catalog(cache_dir)
  universe = class_universe(cache_dir, image_size)
  subgroups = {k: catalog.classes[k].subgroup for k in universe}
  dev = dev_classes(universe, subgroups)
  in_split = [k for k in class_order(universe, subgroups) if (k in dev) == (split == "dev")]
  chosen = set(in_split[:num_classes] if num_classes else in_split)
  classes = tuple(k for k in universe if k in chosen)
  label_of = {k: i for i, k in enumerate(classes)}
  images, labels = [], []
  for name in SOURCE_STYLES:
    style_set = styles.load_style(name, image_size, cache_dir=cache_dir, catalog=catalog)
    keep = [i for i, k in enumerate(style_set.keys) if k in label_of]
    images.append(style_set.images[keep])
    labels += [label_of[style_set.keys[i]] for i in keep]
  images, labels = np.concatenate(images), np.asarray(labels, np.int32)
  if shots:
    rng = np.random.default_rng(seed)
    keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:shots]
                                   for c in range(len(classes))]))
    images, labels = images[keep], labels[keep]
  suffix = "" if num_classes is None else f":{num_classes}_classes"
  return Domain(f"artwork:sources:plain{suffix}", images, labels,
                [catalog.classes[k].name for k in classes])

"""The styles of emoji artwork (each artist's rendering, by package) and their framed pictures.

`load_style(name, size)` fetches the style's package (pinned; cached), frames every picture of a
catalog class the same way (`render.frame_artwork`) and caches the result as one array, so a
style is read once per (size, margin, background). Skin-tone variants are further pictures of
their base class. Credits and licences: `STYLES[name].credit` and docs/ARTWORK.md.
"""
from __future__ import annotations

import hashlib
import logging
import os
from typing import NamedTuple

import numpy as np

from metatpt_jax.data.artwork import catalog as catalog_lib
from metatpt_jax.data.artwork import kinds, packages, render
from metatpt_jax.data.artwork.kinds import Style
from metatpt_jax.data.artwork.packages import Package
from metatpt_jax.errors import UserError

LOG = logging.getLogger("metatpt_jax")

_DATASOURCE = "emoji-datasource-{}", "16.0.0"
_FLUENT_FLAT = Package("npm", "@iconify-json/fluent-emoji-flat", "1.2.6")
_OPENMOJI = Package("npm", "openmoji", "17.0.0")
_FLUENT_CREDIT = "Microsoft Fluent Emoji (MIT)"
_OPENMOJI_CREDIT = ("All emojis designed by OpenMoji - the open-source emoji and icon project. "
                    "License: CC BY-SA 4.0")
# Openly licensed sets only (never Apple's, Facebook's or JoyPixels'). Fluent's colour SVGs are
# left out: 94 % of them draw with <filter>, which cairosvg ignores.
STYLES: dict[str, Style] = {s.name: s for s in (
    Style("google", "png_folder", Package("npm", _DATASOURCE[0].format("google"), _DATASOURCE[1]),
          "img/google/64", credit="Google Noto Emoji (Apache-2.0)"),
    Style("twemoji", "png_folder",
          Package("npm", _DATASOURCE[0].format("twitter"), _DATASOURCE[1]), "img/twitter/64",
          credit="Twemoji by Twitter and jdecked (CC-BY 4.0)"),
    Style("openmoji_color", "svg_folder", _OPENMOJI, "color/svg", credit=_OPENMOJI_CREDIT),
    Style("openmoji_black", "svg_folder", _OPENMOJI, "black/svg", credit=_OPENMOJI_CREDIT),
    Style("fluent_3d", "webp_folder", Package("npm", "@lobehub/fluent-emoji-3d", "1.1.0"),
          "assets", credit=_FLUENT_CREDIT),
    Style("fluent_flat", "iconify_json", _FLUENT_FLAT, "icons.json", credit=_FLUENT_CREDIT),
    Style("fluent_high_contrast", "iconify_json",
          Package("npm", "@iconify-json/fluent-emoji-high-contrast", "1.2.6"), "icons.json",
          credit=_FLUENT_CREDIT),
    Style("symbola", "font", Package("debian", "fonts-symbola", "2.60-1.1"),
          "usr/share/fonts/truetype/ancient-scripts/Symbola_hint.ttf",
          credit="Symbola by George Douros (free for any use)"),
)}


class StyleSet(NamedTuple):
  """A style's framed pictures of catalog classes."""
  style: str
  images: np.ndarray      # uint8 [N, size, size, 3]: over the background colour
  keys: tuple[str, ...]   # [N] the class (base emoji key) of each picture
  variant: np.ndarray     # bool [N]: a skin-tone variant's picture (else the base emoji's)
  rgba: np.ndarray        # uint8 [N, size, size, 4] premultiplied: to put over other backgrounds


def get_style(name: str) -> Style:
  if name not in STYLES:
    raise UserError(f"Unknown artwork style {name!r}; choose one of {sorted(STYLES)}.")
  return STYLES[name]


def load_catalog(cache_dir: str | None = None) -> catalog_lib.Catalog:
  return catalog_lib.read_catalog(packages.fetch(catalog_lib.EMOJIBASE, cache_dir))


def _render(style: Style, catalog, size, margin, cache_dir):
  """(premultiplied RGBA [N, size, size, 4], keys, variant) of the style's catalog pictures."""
  root = packages.fetch(style.package, cache_dir)
  chars = None if style.chars_from is None else packages.fetch(style.chars_from, cache_dir)
  found = kinds.list_artwork(style, root, chars)
  images, keys, variant = [], [], []
  for key, locator in found.items():
    base = key if key in catalog.classes else catalog.variant_of.get(key)
    if base is None:
      continue
    framed = render.frame_rgba(kinds.read_rgba(style, locator, 4 * size), size, margin)
    if framed is not None:  # an empty glyph is no picture of its class
      images.append(framed)
      keys.append(base)
      variant.append(base != key)
  if not images:
    raise UserError(f"Style {style.name!r} has no picture of any catalog class in {root}.")
  return np.stack(images), tuple(keys), np.array(variant)


def load_style(name: str, size: int = 64, margin: float = 0.1, background=render.WHITE,
               cache_dir: str | None = None, catalog: catalog_lib.Catalog | None = None):
  """The style's framed pictures over `background`, rendered once and then read from the
  cache (which keeps them with their alpha)."""
  style = get_style(name)
  cache_dir = cache_dir or packages.default_cache_dir()
  catalog = catalog or load_catalog(cache_dir)
  tag = hashlib.sha256(repr((style, size, margin, sorted(catalog.classes),
                             sorted(catalog.variant_of.items()))).encode()).hexdigest()[:12]
  path = os.path.join(cache_dir, "rendered", f"{name}-{size}px-{tag}.npz")
  if os.path.exists(path):
    with np.load(path) as saved:
      rgba, keys, variant = saved["rgba"], tuple(saved["keys"].tolist()), saved["variant"]
  else:
    LOG.info("rendering style %s at %d px (once; cached in %s)", name, size, path)
    rgba, keys, variant = _render(style, catalog, size, margin, cache_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, rgba=rgba, keys=np.array(keys), variant=variant)
    os.replace(tmp, path)
  return StyleSet(name, render.over(rgba, background), keys, variant, rgba)


def indistinguishable_groups(style_set: StyleSet) -> list[tuple[str, ...]]:
  """Groups of classes whose base pictures are identical in this style (colour-only variants in
  line art, e.g. the coloured circles): the style cannot tell them apart."""
  by_picture = {}
  for image, key, is_variant in zip(style_set.images, style_set.keys, style_set.variant):
    if not is_variant:
      by_picture.setdefault(hashlib.sha256(image.tobytes()).hexdigest(), []).append(key)
  return sorted(tuple(sorted(keys)) for keys in by_picture.values() if len(keys) > 1)

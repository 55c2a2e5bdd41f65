"""The kinds of artwork source: how a package's files become emoji keys and RGBA pictures.

A style is named by its kind and its package, so any further package of a known kind plugs in
by a new `Style` entry:
  png_folder / webp_folder / svg_folder: one file per emoji in `path`, named by its code points
    (emoji-datasource-google: `img/google/64/1f600.png`; OpenMoji: `color/svg/1F600.svg`);
  iconify_json: an Iconify JSON set (`path` = icons.json: SVG bodies by icon name) with a
    chars.json mapping code points to icon names (from `chars_from` when the set has none);
  font: an outline font file (`path`), one glyph per single code point, drawn in black.

Keys are the lower-case code points joined by "-" without U+FE0F (the variation selector that
packages disagree on), e.g. "1f44b-1f3fb".
"""
from __future__ import annotations

import io
import json
import os
from typing import Literal, NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from metatpt_jax.data.artwork.packages import Package
from metatpt_jax.errors import UserError

KINDS = ("png_folder", "webp_folder", "svg_folder", "iconify_json", "font")
_SUFFIX = {"png_folder": ".png", "webp_folder": ".webp", "svg_folder": ".svg"}


class Style(NamedTuple):
  """One artist's rendering of the emoji: where its pictures are and how to read them."""
  name: str
  kind: Literal["png_folder", "webp_folder", "svg_folder", "iconify_json", "font"]
  package: Package
  path: str                      # inside the package (see the module docstring)
  chars_from: Package | None = None  # iconify_json: the package whose chars.json to use
  credit: str = ""               # artist, licence and attribution line


def normalize_key(text: str) -> str:
  """'1F44B-1F3FB', '1f44b_1f3fb' or '0023-FE0F-20E3' -> '1f44b-1f3fb', '0023-20e3'."""
  parts = text.lower().replace("_", "-").replace(" ", "-").split("-")
  return "-".join(p.lstrip("0").rjust(4, "0") for p in parts if p and p != "fe0f")


def key_to_text(key: str) -> str:
  return "".join(chr(int(p, 16)) for p in key.split("-"))


def list_artwork(style: Style, root: str, chars_root: str | None = None) -> dict[str, object]:
  """key -> locator (what `read_rgba` reads) of every picture the style's package holds."""
  where = os.path.join(root, style.path)
  if not os.path.exists(where):
    raise UserError(f"Style {style.name!r}: {where} does not exist; is {style.package.name}"
                    f"@{style.package.version} fetched completely? Delete its folder to refetch.")
  if style.kind in _SUFFIX:
    names = sorted(n for n in os.listdir(where) if n.lower().endswith(_SUFFIX[style.kind]))
    found = {}
    for name in names:  # with and without FE0F: the first in sorted order
      found.setdefault(normalize_key(name[:-len(_SUFFIX[style.kind])]), os.path.join(where, name))
    return found
  if style.kind == "iconify_json":
    return _iconify_documents(where, os.path.join(chars_root or root, "chars.json"))
  return _font_glyphs(where)


def _iconify_documents(icons_path: str, chars_path: str) -> dict[str, str]:
  with open(icons_path) as f:
    data = json.load(f)
  with open(chars_path) as f:
    chars = json.load(f)
  icons, aliases = data["icons"], data.get("aliases", {})
  found = {}
  for code, name in sorted(chars.items()):
    name = aliases.get(name, {}).get("parent", name)
    if name in icons:
      icon = icons[name]
      w, h = icon.get("width", data.get("width", 16)), icon.get("height", data.get("height", 16))
      found.setdefault(normalize_key(code), (
          f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
          f'width="{w}" height="{h}" viewBox="0 0 {w} {h}">{icon["body"]}</svg>'))
  return found


def _font_glyphs(font_path: str) -> dict[str, str]:
  from fontTools.ttLib import TTFont  # matplotlib's dependency; only the font kind needs it
  with TTFont(font_path, lazy=True) as font:
    cmap = font.getBestCmap() or {}
  return {normalize_key(f"{cp:x}"): (font_path, chr(cp)) for cp in sorted(cmap) if cp > 0x7F}


def read_rgba(style: Style, locator, raster: int) -> np.ndarray:
  """The picture as uint8 RGBA [H, W, 4], vector sources drawn about `raster` px wide."""
  if style.kind in ("png_folder", "webp_folder"):
    with Image.open(locator) as im:
      return np.asarray(im.convert("RGBA"))
  if style.kind in ("svg_folder", "iconify_json"):
    import cairosvg  # needs the system's libcairo; only vector styles use it
    source = dict(url=locator) if style.kind == "svg_folder" else dict(
        bytestring=locator.encode())
    png = cairosvg.svg2png(**source, output_width=raster, output_height=raster)
    with Image.open(io.BytesIO(png)) as im:
      return np.asarray(im.convert("RGBA"))
  font_path, text = locator
  font = ImageFont.truetype(font_path, raster)
  canvas = Image.new("RGBA", (2 * raster, 2 * raster), (0, 0, 0, 0))
  ImageDraw.Draw(canvas).text((raster // 2, raster // 2), text, font=font, fill=(0, 0, 0, 255))
  return np.asarray(canvas)

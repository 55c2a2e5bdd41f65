"""The classes: base emoji by CLDR name, with tags, group and subgroup (npm emojibase-data).

A class is a base emoji; its skin-tone variants are further pictures of the same class (the
classifier never has to tell skin tones apart). Flags, keycaps and components (skin-tone and
hair-style swatches, regional indicators) are not classes: their pictures are letters, digits
or colour patches, not objects a caption names.
"""
from __future__ import annotations

import json
import os
from typing import NamedTuple

from metatpt_jax.data.artwork.kinds import normalize_key
from metatpt_jax.data.artwork.packages import Package

EMOJIBASE = Package("npm", "emojibase-data", "17.0.0")
# Not classes: emojibase's component group, and these subgroups of other groups.
EXCLUDED_GROUPS = ("component", "flags")
EXCLUDED_SUBGROUPS = ("keycap",)


class EmojiClass(NamedTuple):
  key: str                # normalised code points of the base emoji (`kinds.normalize_key`)
  name: str               # CLDR label: "dog face", "man: red hair"
  tags: tuple[str, ...]   # CLDR keywords
  group: str              # e.g. "animals-nature"
  subgroup: str           # e.g. "animal-mammal"


class Catalog(NamedTuple):
  classes: dict[str, EmojiClass]   # base key -> class, in emojibase's order
  variant_of: dict[str, str]       # skin-tone variant key -> its base key


def read_catalog(root: str) -> Catalog:
  """The catalog from an unpacked emojibase-data package at `root`."""
  with open(os.path.join(root, "en", "data.json")) as f:
    entries = json.load(f)
  with open(os.path.join(root, "meta", "groups.json")) as f:
    meta = json.load(f)
  groups, subgroups = meta["groups"], meta["subgroups"]
  classes, variant_of = {}, {}
  for entry in sorted(entries, key=lambda e: e.get("order", 1 << 30)):
    if "group" not in entry:
      continue
    group, subgroup = groups[str(entry["group"])], subgroups[str(entry["subgroup"])]
    if group in EXCLUDED_GROUPS or subgroup in EXCLUDED_SUBGROUPS:
      continue
    key = normalize_key(entry["hexcode"])
    classes[key] = EmojiClass(key, entry["label"], tuple(entry.get("tags", ())), group, subgroup)
    for skin in entry.get("skins", ()):
      variant_of[normalize_key(skin["hexcode"])] = key
  return Catalog(classes, variant_of)

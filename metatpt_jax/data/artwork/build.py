"""Fetches and renders styles of emoji artwork, then writes the manifest (`make artwork`).

    python -m metatpt_jax.data.artwork.build [--styles google,twemoji,...] [--size 64]

The manifest (`<cache>/manifest.json`) lists every class: key (code point sequence), name,
tags, group, subgroup, the styles that have a picture of it and how many, and per style the
groups of classes it cannot tell apart (identical pictures).
"""
from __future__ import annotations

import argparse
import json
import os

from metatpt_jax import errors
from metatpt_jax.data.artwork import packages, styles


def manifest(catalog, style_sets: dict) -> dict:
  """The manifest (a JSON-able dict) of the catalog's classes over the rendered styles."""
  counts = {name: {} for name in style_sets}
  for name, style_set in style_sets.items():
    for key in style_set.keys:
      counts[name][key] = counts[name].get(key, 0) + 1
  classes = [dict(key=c.key, name=c.name, tags=list(c.tags), group=c.group, subgroup=c.subgroup,
                  pictures={n: counts[n][c.key] for n in style_sets if c.key in counts[n]})
             for c in catalog.classes.values()]
  return dict(classes=classes,
              styles={n: dict(credit=styles.STYLES[n].credit,
                              package=list(styles.STYLES[n].package),
                              classes=len(counts[n]), pictures=len(s.keys),
                              indistinguishable=styles.indistinguishable_groups(s))
                      for n, s in style_sets.items()})


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--styles", default=",".join(styles.STYLES))
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--cache-dir", default=packages.default_cache_dir())
  args = parser.parse_args(argv)
  with errors.report_user_errors("metatpt-artwork"):
    catalog = styles.load_catalog(args.cache_dir)
    sets = {name: styles.load_style(name, args.size, cache_dir=args.cache_dir, catalog=catalog)
            for name in args.styles.split(",")}
    path = os.path.join(args.cache_dir, "manifest.json")
    with open(path, "w") as f:
      json.dump(manifest(catalog, sets), f, indent=1)
  for name, s in sets.items():
    print(f"{name}: {len(set(s.keys))} classes, {len(s.keys)} pictures")
  print(f"manifest: {path}")


if __name__ == "__main__":
  main()

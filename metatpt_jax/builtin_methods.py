"""Importing this module registers every built-in method; `registry` imports it before a lookup.

Each module registers its own method(s) when imported. The order of `MODULES` is the
registration order, which is the order of the benchmark's tables.
"""
import importlib

MODULES = (
    "metatpt_jax.zero_shot",       # zero-shot CLIP (no adaptation)
    "metatpt_jax.tpt",             # TPT
    "metatpt_jax.metatpt",         # MetaTPT and its ablations
    "metatpt_jax.ctpt",            # C-TPT
    "metatpt_jax.training_free",   # ZERO and MTA
    "metatpt_jax.tda",             # TDA (online)
)
for _module in MODULES:
  importlib.import_module(_module)

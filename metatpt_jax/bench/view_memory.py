"""Compiled memory of TPT's view maker per sample: centre square vs a full-image canvas.

    python -m metatpt_jax.bench.view_memory [--image-size 224] [--views 64] [--canvas 512]

Compile-only (nothing runs): XLA's memory plan of `views.tpt_views` for one sample, in fp32.
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from metatpt_jax import views


def compiled_mib(fn, *args) -> float:
  analysis = jax.jit(fn).lower(*args).compile().memory_analysis()
  total = (analysis.temp_size_in_bytes + analysis.argument_size_in_bytes
           + analysis.output_size_in_bytes)
  return total / 2 ** 20


def measure(image_size: int = 224, n_views: int = 64, canvas: int = 512) -> dict:
  image = jax.ShapeDtypeStruct((image_size, image_size, 3), jnp.float32)
  key = jax.random.key(0)
  square = compiled_mib(lambda i, k: views.tpt_views(i, k, n_views), image, key)
  source = views.Source(jax.ShapeDtypeStruct((canvas, canvas, 3), jnp.float32),
                        jax.ShapeDtypeStruct((2,), jnp.int32))
  full = compiled_mib(lambda i, k, s: views.tpt_views(i, k, n_views, s), image, key, source)
  return dict(centre_square_mib=square, canvas_mib=full, extra_mib=full - square)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--views", type=int, default=64)
  parser.add_argument("--canvas", type=int, default=512)
  args = parser.parse_args(argv)
  out = measure(args.image_size, args.views, args.canvas)
  print(f"{args.views} views at {args.image_size} px: centre square {out['centre_square_mib']:.1f}"
        f" MiB, {args.canvas}-px canvas {out['canvas_mib']:.1f} MiB "
        f"(+{out['extra_mib']:.1f} MiB per sample)")


if __name__ == "__main__":
  main()

"""Small builders shared by the TPT/MetaTPT tests: a tiny random CLIP and its prompt bank."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from metatpt_jax import generator as gen
from metatpt_jax import metatpt, prompts
from metatpt_jax.clip import model
from metatpt_jax.clip.config import get_arch
from metatpt_jax.frozen_clip import FrozenCLIP, ModelSpec

CLASS_NAMES = ["cat", "dog", "sea lion", "T-shirt", "ankle boot"]
# Small enough for second-order gradients in float64 in seconds; short text context.
TEST_ARCH = get_arch("micro")


def tiny_frozen(seed=0, arch=TEST_ARCH, dtype=jnp.float32, logit_scale=None):
  """(FrozenCLIP, ModelSpec) of a random tiny CLIP with "a photo of a" context."""
  params = model.init_params(jax.random.key(seed), arch)
  if logit_scale is not None:
    params = dict(params, logit_scale=jnp.asarray(logit_scale, jnp.float32))
  params = jax.tree.map(lambda x: x.astype(dtype), params)
  bank = prompts.build_prompt_bank(params, arch, CLASS_NAMES, n_ctx=4)
  ctx = prompts.init_context(params, arch, n_ctx=4, init="a photo of a")
  return FrozenCLIP(params, bank, ctx.astype(dtype)), ModelSpec(arch, compute_dtype=dtype)


def random_images(seed, num, size=TEST_ARCH.vision.image_size):
  return jax.random.uniform(jax.random.key(seed), (num, size, size, 3))


def init_phi(spec: metatpt.MetaTPTSpec, arch=TEST_ARCH, seed=1, dtype=jnp.float32, perturb=0.0):
  """Generator parameters; `perturb` > 0 moves the zero-initialised output layer off zero so
  gradients through every factor are exercised."""
  phi = gen.init_generator(jax.random.key(seed), spec.generator, arch.embed_dim)
  if perturb:
    leaves, tree = jax.tree.flatten(phi)
    keys = jax.random.split(jax.random.key(seed + 100), len(leaves))
    leaves = [x + perturb * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    phi = jax.tree.unflatten(tree, leaves)
  return jax.tree.map(lambda x: x.astype(dtype), phi)

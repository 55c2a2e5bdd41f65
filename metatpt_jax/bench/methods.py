"""Turns benchmark method configs into static specs and per-domain adaptation states."""
from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import ml_collections

from metatpt_jax import adapt, metatpt, prompts, tpt
from metatpt_jax import generator as gen
from metatpt_jax.errors import UserError
from metatpt_jax.frozen_clip import FrozenCLIP, ModelSpec

KINDS = ("zero_shot", "tpt", "metatpt")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}


def _fields(cfg: ml_collections.ConfigDict, cls, exclude=()) -> dict:
  known = set(cls._fields)
  extra = set(cfg.keys()) - known - {"kind", *exclude}
  if extra:
    raise UserError(f"Unknown {cls.__name__} fields {sorted(extra)}; valid: {sorted(known)}.")
  return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k in known}


def method_spec(cfg: ml_collections.ConfigDict):
  """(kind, static spec) for one method config (`kind` plus the spec's fields)."""
  kind = cfg.get("kind")
  if kind not in KINDS:
    raise UserError(f"Method kind {kind!r} unknown; choose one of {KINDS}.")
  if kind == "zero_shot":
    return kind, None
  if kind == "tpt":
    spec = tpt.TPTSpec(**_fields(cfg, tpt.TPTSpec))
    if spec.steps < 1 or spec.num_keep < 1:
      raise UserError(f"TPT needs steps >= 1 and n_views * selection_ratio >= 1, got {spec}.")
    return kind, spec
  fields = _fields(cfg, metatpt.MetaTPTSpec, exclude=("offline_images",))
  if "generator" in fields:
    fields["generator"] = gen.GeneratorSpec(**dict(fields["generator"]))
  spec = metatpt.MetaTPTSpec(**fields)
  _check_metatpt(spec)
  return kind, spec


def _check_metatpt(spec: metatpt.MetaTPTSpec) -> None:
  choices = dict(augment=("learned", "fixed", "frozen"), schedule=("dual_loop", "joint"),
                 order=("second", "first"), selection=("every_step", "first_step"),
                 inner_step=("sgd", "normalized"))
  for name, valid in choices.items():
    if getattr(spec, name) not in valid:
      raise UserError(f"MetaTPT {name}={getattr(spec, name)!r}; choose one of {valid}.")
  metatpt.losses.get_aux_loss(spec.aux_loss)
  if spec.view_chunk < 0:
    raise UserError(f"MetaTPT view_chunk={spec.view_chunk}; use 0 (all views at once) or a "
                    "positive number of views per chunk.")
  if spec.view_chunk and spec.aux_loss not in metatpt.losses.PER_VIEW_AUX:
    raise UserError(f"MetaTPT view_chunk={spec.view_chunk} needs an auxiliary loss that is a "
                    f"mean of per-view terms ({sorted(metatpt.losses.PER_VIEW_AUX)}); "
                    f"aux_loss={spec.aux_loss!r} is not: set view_chunk=0.")
  if spec.num_keep < 1 or spec.outer_steps < 1 or spec.inner_steps < 0:
    raise UserError("MetaTPT needs n_views * selection_ratio >= 1, outer_steps >= 1, "
                     f"inner_steps >= 0; got {spec}.")


def model_spec(cfg: ml_collections.ConfigDict, arch) -> ModelSpec:
  if cfg.compute_dtype not in DTYPES:
    raise UserError(f"compute_dtype {cfg.compute_dtype!r}; choose one of {sorted(DTYPES)}.")
  return ModelSpec(arch, compute_dtype=DTYPES[cfg.compute_dtype], remat=bool(cfg.remat),
                   class_chunk=int(cfg.get("class_chunk", 0)))


def domain_key(seed: int, domain: str) -> jax.Array:
  """The base key of (seed, domain); samples fold in their index."""
  return jax.random.fold_in(jax.random.key(seed), zlib.crc32(domain.encode()) & 0x7FFFFFFF)


def build_state(params, arch, class_names, prompt_cfg, kind, spec, seed) -> adapt.AdaptState:
  """AdaptState for one label set: prompt bank, initial context and (MetaTPT) initial phi."""
  bank = prompts.build_prompt_bank(params, arch, class_names, prompt_cfg.n_ctx)
  init = prompt_cfg.init or None
  ctx = prompts.init_context(params, arch, n_ctx=prompt_cfg.n_ctx, init=init,
                             key=jax.random.key(seed))
  phi = None
  if kind == "metatpt":
    phi = gen.init_generator(jax.random.fold_in(jax.random.key(seed), 1), spec.generator,
                             arch.embed_dim)
  return adapt.AdaptState(FrozenCLIP(params, bank, ctx), phi)

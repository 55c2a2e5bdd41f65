"""Turns benchmark method configs into static specs and per-domain adaptation states."""
from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import ml_collections

from metatpt_jax import adapt, backbones, prompts, registry
from metatpt_jax.backbones import dassl
from metatpt_jax.errors import UserError
from metatpt_jax.frozen_clip import FrozenCLIP, ModelSpec

# Matmul input dtypes (norms, softmax and outputs stay fp32): "float16" is the authors' CUDA
# autocast (fp32 weights, fp16 matmuls), "bfloat16" the TPU / GPU choice.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16,
          "float64": jnp.float64}


def method_spec(cfg: ml_collections.ConfigDict):
  """(kind, static spec) for one method config: `kind` (a `registry` name), the spec type's
  fields and the method's `config_fields`. The spec checks itself (`specs.Spec`)."""
  method = registry.get(cfg.get("kind"))
  if method.spec_type is None:
    return method.name, None
  known = set(method.spec_type.field_names())
  extra = set(cfg.keys()) - known - {"kind", *method.config_fields}
  if extra:
    raise UserError(f"Unknown {method.spec_type.__name__} fields {sorted(extra)}; valid: "
                    f"{sorted(known)}.")
  fields = {k: v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v
            for k, v in cfg.items() if k in known}
  return method.name, method.spec_type(**fields)


def backbone_spec(prompt_cfg):
  """The prompt backbone `prompt.backbone` names ("maple", "mmrl") with its section's fields
  (`prompt.maple`, `prompt.mmrl`); None for plain CLIP with a context (CoOp's vectors load
  through `prompt.init`)."""
  name = (prompt_cfg or {}).get("backbone", "") if prompt_cfg is not None else ""
  if not name:
    return None
  fields = prompt_cfg.get(name)
  fields = fields.to_dict() if isinstance(fields, ml_collections.ConfigDict) else dict(
      fields or {})
  return backbones.get(name, **fields)


def model_spec(cfg: ml_collections.ConfigDict, arch, prompt_cfg=None) -> ModelSpec:
  if cfg.compute_dtype not in DTYPES:
    raise UserError(f"compute_dtype {cfg.compute_dtype!r}; choose one of {sorted(DTYPES)}.")
  backbone = backbone_spec(prompt_cfg)
  if backbone is not None:
    backbone.check(arch)
  return ModelSpec(arch, compute_dtype=DTYPES[cfg.compute_dtype], remat=bool(cfg.remat),
                   class_chunk=int(cfg.get("class_chunk", 0)), backbone=backbone)


def domain_key(seed: int, domain: str) -> jax.Array:
  """The base key of (seed, domain); samples fold in their index."""
  return jax.random.fold_in(jax.random.key(seed), zlib.crc32(domain.encode()) & 0x7FFFFFFF)


def initial_method_state(kind, spec, params, arch, class_names, key):
  """A method's per-domain starting state: `registry.Method.model_state` (from the model and
  the class names), else `init_state`, else None."""
  method = registry.get(kind)
  if method.model_state is not None:
    return method.model_state(params, arch, class_names, spec)
  if method.init_state is not None:
    return method.init_state(key, spec, arch, len(class_names))
  return None


def backbone_frozen(params, arch, class_names, prompt_cfg, seed) -> FrozenCLIP | None:
  """The frozen state on `prompt.backbone` (None without one): its prompt tensors from the
  Dassl file `prompt.backbone_checkpoint`, or the backbone's own init from the seed."""
  backbone = backbone_spec(prompt_cfg)
  if backbone is None:
    return None
  path = prompt_cfg.get("backbone_checkpoint", "")
  prompt = (dassl.load_prompt(path, backbone, params, arch) if path
            else backbone.init(params, arch, jax.random.key(seed)))
  return backbones.make_frozen(backbone, params, arch, class_names, prompt,
                               tuple(prompt_cfg.get("adapt", ())) or None)


def build_state(params, arch, class_names, prompt_cfg, kind, spec, seed) -> adapt.AdaptState:
  """AdaptState for one label set: prompt bank, initial context (or a backbone's prompt) and
  the method's initial per-domain state (`initial_method_state`)."""
  frozen = backbone_frozen(params, arch, class_names, prompt_cfg, seed)
  if frozen is not None:
    method_state = initial_method_state(kind, spec, frozen.params, arch, class_names,
                                        jax.random.fold_in(jax.random.key(seed), 1))
    return adapt.AdaptState(frozen, method_state)
  bank = prompts.build_prompt_bank(params, arch, class_names, prompt_cfg.n_ctx)
  init = prompt_cfg.init or None
  ctx = prompts.init_context(params, arch, n_ctx=prompt_cfg.n_ctx, init=init,
                             key=jax.random.key(seed))
  method_state = initial_method_state(kind, spec, params, arch, class_names,
                                      jax.random.fold_in(jax.random.key(seed), 1))
  return adapt.AdaptState(FrozenCLIP(params, bank, ctx), method_state)

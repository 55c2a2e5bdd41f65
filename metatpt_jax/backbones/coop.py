"""Plain CLIP and CoOp as a prompt backbone: learned text context only, the image tower untouched.

Every backbone here is a frozen (hashable) dataclass of static settings whose methods are pure
functions of explicit pytrees: `init` makes the prompt parameters (a dict of arrays), the other
methods compute unit-norm features and logits from CLIP's parameters and them. What test-time
tuning adapts is a subset of the prompt dict's top-level keys, the field `adapt`.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from metatpt_jax import prompts
from metatpt_jax.clip import model as clip_model
from metatpt_jax.clip.config import CLIPArch


@dataclasses.dataclass(frozen=True)
class CoOp:
  """[SOT, ctx_1..ctx_n, class tokens, ".", EOT] (CoOp, TPT); CLIP's image features.

  n_ctx: context vectors; ctx_init: their initial words (None: N(0, 0.02^2)); template: the text
  after the context, "{}" the class name.
  """
  n_ctx: int = 4
  ctx_init: str | None = "a photo of a"
  template: str = "{}."
  adapt: tuple[str, ...] = ("ctx",)
  name = "coop"
  image_uses_prompt = False  # image features depend on CLIP alone: computed once per view

  def check(self, arch: CLIPArch) -> None:
    del arch  # any CLIP: the context only enters the text tower

  def init(self, clip_params, arch: CLIPArch, key=None, tokenizer=None) -> dict:
    return {"ctx": prompts.init_context(clip_params, arch, n_ctx=self.n_ctx, init=self.ctx_init,
                                        key=key, tokenizer=tokenizer)}

  def bank(self, clip_params, arch, class_names, tokenizer=None) -> prompts.PromptBank:
    return prompts.build_prompt_bank(clip_params, arch, class_names, self.n_ctx, tokenizer,
                                     self.template)

  def text_features(self, clip_params, arch, bank, prompt: dict, *, dtype=jnp.float32,
                    class_chunk: int = 0) -> jax.Array:
    return prompts.text_features(clip_params, arch, bank, prompt["ctx"], dtype=dtype,
                                 class_chunk=class_chunk)

  def image_features(self, clip_params, arch, prompt: dict, images: jax.Array, *,
                     dtype=jnp.float32, remat: bool = False) -> jax.Array:
    """Unit-norm features [N, E] of CLIP-normalised images [N, S, S, 3]."""
    del prompt
    return clip_model.normalize(clip_model.encode_image(clip_params, images, arch, remat=remat,
                                                        dtype=dtype))

  def clip_params(self, clip_params):
    """CLIP's parameters as this backbone uses them (unchanged)."""
    return clip_params

  def logits(self, clip_params, image_features, text_features) -> jax.Array:
    """exp(logit_scale) * cos: [N, E] x [C, E] -> [N, C]."""
    return jnp.exp(clip_params["logit_scale"]) * image_features @ text_features.T


def dense(p: dict, x: jax.Array) -> jax.Array:
  """x @ kernel + bias for a {"kernel": [..., I, O], "bias": [..., O]} layer."""
  return x @ p["kernel"].astype(x.dtype) + p["bias"].astype(x.dtype)


def torch_linear_init(key, fan_in: int, fan_out: int, copies: int | None = None) -> dict:
  """nn.Linear's default init, U(+-1/sqrt(fan_in)) for weight and bias; `copies` stacks that
  one layer (MaPLe and MMRL deep-copy one Linear per layer: every copy starts equal)."""
  kw, kb = jax.random.split(key)
  bound = fan_in ** -0.5
  layer = {"kernel": jax.random.uniform(kw, (fan_in, fan_out), minval=-bound, maxval=bound),
           "bias": jax.random.uniform(kb, (fan_out,), minval=-bound, maxval=bound)}
  if copies is None:
    return layer
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (copies,) + x.shape), layer)

"""MaPLe (Khattak et al., CVPR 2023): coupled deep prompts in both towers.

As the authors' `trainers/maple.py` and modified CLIP build it (ViT-B/16 sizes in brackets):
- text context `ctx` [n_ctx=2, 512], initialised from "a photo" of "a photo of a", replaces
  token positions 1..n of "a photo of a {class}." (the words "of a" stay in the frozen suffix);
- the visual prompt `proj(ctx)` (Linear 512 -> 768, with bias) is appended after the patch
  tokens, after the positional embedding and before `ln_pre`;
- before blocks 1..depth-1 of the text tower, `deep_text[k]` [2, 512] writes over positions 1..2;
  before the same blocks of the vision tower, `deep_proj[k](deep_text[k])` writes over the last 2
  tokens (the coupled visual prompts); block 0 sees the shallow prompts alone;
- logits exp(logit_scale) * cos with the class token's feature; depth 9 (base-to-novel) or 3
  (cross-dataset, what TPT on MaPLe loads).
TPT on MaPLe (jameelhassan/TPT) tunes every one of these tensors, reset per sample, and
recomputes the views' image features at every step, through the visual prompts.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from metatpt_jax import prompts
from metatpt_jax.backbones.coop import dense, torch_linear_init
from metatpt_jax.clip import model as clip_model
from metatpt_jax.clip import shared_prefix
from metatpt_jax.clip.config import CLIPArch
from metatpt_jax.clip.layer_prompts import LayerPrompts
from metatpt_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class MaPLe:
  """depth: blocks that see prompts (1 shallow + depth-1 deep); n_ctx: tokens per prompt;
  ctx_init: the words whose first n_ctx tokens initialise the context, the rest staying in the
  prompt after it ("a photo of a": ctx "a photo", then "of a {class}."); template: after them."""
  depth: int = 3
  n_ctx: int = 2
  ctx_init: str = "a photo of a"
  template: str = "{}."
  adapt: tuple[str, ...] = ("ctx", "proj", "deep_text", "deep_proj")  # TPT on MaPLe: all
  name = "maple"
  image_uses_prompt = True  # the visual prompts come from the text prompts

  def check(self, arch: CLIPArch) -> None:
    if arch.vision.is_resnet:
      raise UserError("MaPLe puts prompt tokens into a ViT image tower; this CLIP's is a "
                      "ResNet.")
    layers = min(arch.text.layers, arch.vision.layers)
    if not 1 <= self.depth <= layers:
      raise UserError(f"MaPLe depth {self.depth} must be between 1 and the towers' {layers} "
                      "layers.")

  def _words(self) -> tuple[str, str]:
    words = self.ctx_init.split()
    if len(words) < self.n_ctx:
      raise UserError(f"MaPLe's ctx_init {self.ctx_init!r} has fewer than n_ctx={self.n_ctx} "
                      "words.")
    return " ".join(words[:self.n_ctx]), " ".join(words[self.n_ctx:])

  def init(self, clip_params, arch: CLIPArch, key, tokenizer=None) -> dict:
    """The authors' init: ctx from the words, deep text prompts N(0, 0.02^2), projections with
    nn.Linear's init (all deep projections one copied layer)."""
    self.check(arch)
    ctx_words, _ = self._words()
    k_proj, k_text, k_deep = jax.random.split(key, 3)
    width, vwidth, deep = arch.text.width, arch.vision.width, self.depth - 1
    return {
        "ctx": prompts.init_context(clip_params, arch, n_ctx=self.n_ctx, init=ctx_words,
                                    tokenizer=tokenizer),
        "proj": torch_linear_init(k_proj, width, vwidth),
        "deep_text": 0.02 * jax.random.normal(k_text, (deep, self.n_ctx, width)),
        "deep_proj": torch_linear_init(k_deep, width, vwidth, copies=deep),
    }

  def bank(self, clip_params, arch, class_names, tokenizer=None) -> prompts.PromptBank:
    rest = self._words()[1]
    template = f"{rest} {self.template}" if rest else self.template
    return prompts.build_prompt_bank(clip_params, arch, class_names, self.n_ctx, tokenizer,
                                     template)

  def _layer_prompts(self, deep: jax.Array, layers: int, position: int) -> LayerPrompts:
    tokens = tuple(deep[i - 1] if 1 <= i < self.depth else None for i in range(layers))
    return LayerPrompts(tokens, position=position)

  def text_features(self, clip_params, arch, bank, prompt: dict, *, dtype=jnp.float32,
                    class_chunk: int = 0) -> jax.Array:
    prefix = jnp.concatenate([bank.prefix[0], prompt["ctx"].astype(bank.prefix.dtype)], axis=0)
    feats = shared_prefix.encode_text_shared_prefix(
        clip_params, prefix, bank.suffix, bank.eot_indices, arch, dtype=dtype,
        class_chunk=class_chunk,
        prompts=self._layer_prompts(prompt["deep_text"], arch.text.layers, position=1))
    return clip_model.normalize(feats)

  def visual_prompts(self, prompt: dict) -> tuple[jax.Array, jax.Array]:
    """(shallow [n, Wv], deep [depth-1, n, Wv]): the text prompts through their couplings."""
    deep = jax.vmap(dense)(prompt["deep_proj"], prompt["deep_text"])
    return dense(prompt["proj"], prompt["ctx"]), deep

  def image_features(self, clip_params, arch, prompt: dict, images: jax.Array, *,
                     dtype=jnp.float32, remat: bool = False) -> jax.Array:
    shallow, deep = self.visual_prompts(prompt)
    feats = clip_model.encode_image(
        clip_params, images, arch, remat=remat, dtype=dtype, appended=shallow,
        prompts=self._layer_prompts(deep, arch.vision.layers, position=-self.n_ctx))
    return clip_model.normalize(feats)

  def clip_params(self, clip_params):
    """CLIP's parameters as this backbone uses them (unchanged)."""
    return clip_params

  def logits(self, clip_params, image_features, text_features) -> jax.Array:
    return jnp.exp(clip_params["logit_scale"]) * image_features @ text_features.T

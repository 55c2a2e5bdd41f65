"""MMRL (Guo et al., CVPR 2025): a shared representation space mapped into both towers' upper
layers, and a second image feature read from the representation tokens.

As the authors' `trainers/mmrl.py` and `clip/model_mmrl.py` build it (ViT-B/16 sizes):
- `rep` [5, 512] tokens, normal(0.02); per representation layer a Linear to each tower
  (`r2v` 512 -> 768, `r2t` 512 -> 512, with bias; one layer copied, so every copy starts equal);
- layers are 1-based in their config, (6, ..., 12): before block 5 the mapped tokens are inserted
  after the class / start token (the text sequence grows by 5 and pools at EOT + 5), before
  blocks 6..11 they write over those 5 positions; no positional embedding on them;
- the image's class token gives CLIP's feature; the representation tokens, each through
  `ln_post`, averaged, then `proj_rep` [768, 512] (a new random layer, 768^-0.5 normal) give the
  second; the text prompt is a fixed per-dataset template ("a photo of a {}.");
- logits 100 * (alpha * cos(class token, text) + (1 - alpha) * cos(representation, text)) with
  the constant scale 100: alpha 0.7 on base classes, ImageNet and few-shot; 1.0 (class token
  only) on novel classes and cross-dataset targets, the default here.
No public code tunes MMRL at test time. Ours adapts the shared tokens `rep` alone (`adapt`): the
5 x 512 analogue of TPT's context, feeding both towers, while the 4.6 M mapping parameters
learned from few shots stay as trained (one entropy step on them per image would move millions
of parameters from one image). Other choices are the `adapt` field.
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

SCALE = 100.0  # MMRL's logits use a constant, not CLIP's logit_scale


@dataclasses.dataclass(frozen=True)
class MMRL:
  """n_tokens: representation tokens; rep_dim: their width; rep_layers: 1-based layers that
  receive them (the first inserts); alpha: the class-token branch's weight in the logits."""
  n_tokens: int = 5
  rep_dim: int = 512
  rep_layers: tuple[int, ...] = (6, 7, 8, 9, 10, 11, 12)
  alpha: float = 1.0
  template: str = "a photo of a {}."
  adapt: tuple[str, ...] = ("rep",)
  name = "mmrl"
  image_uses_prompt = True

  def check(self, arch: CLIPArch) -> None:
    if arch.vision.is_resnet:
      raise UserError("MMRL puts prompt tokens into a ViT image tower; this CLIP's is a "
                      "ResNet.")
    layers = min(arch.text.layers, arch.vision.layers)
    if list(self.rep_layers) != list(range(self.rep_layers[0], self.rep_layers[0]
                                           + len(self.rep_layers))) or not (
        1 <= self.rep_layers[0] and self.rep_layers[-1] <= layers):
      raise UserError(f"MMRL rep_layers {self.rep_layers} must be consecutive 1-based layers "
                      f"within the towers' {layers}.")
    if not 0.0 <= self.alpha <= 1.0:
      raise UserError(f"MMRL alpha {self.alpha} must be in [0, 1].")

  def init(self, clip_params, arch: CLIPArch, key, tokenizer=None) -> dict:
    """The authors' init (`proj_rep` is not in CLIP's weights: random, trained with the rest)."""
    del clip_params, tokenizer
    self.check(arch)
    k_rep, k_v, k_t, k_p = jax.random.split(key, 4)
    n = len(self.rep_layers)
    return {
        "rep": 0.02 * jax.random.normal(k_rep, (self.n_tokens, self.rep_dim)),
        "r2v": torch_linear_init(k_v, self.rep_dim, arch.vision.width, copies=n),
        "r2t": torch_linear_init(k_t, self.rep_dim, arch.text.width, copies=n),
        "proj_rep": arch.vision.width ** -0.5 * jax.random.normal(
            k_p, (arch.vision.width, arch.embed_dim)),
    }

  def bank(self, clip_params, arch, class_names, tokenizer=None) -> prompts.PromptBank:
    return prompts.build_prompt_bank(clip_params, arch, class_names, 0, tokenizer, self.template)

  def _layer_prompts(self, mapping: dict, rep: jax.Array, layers: int) -> LayerPrompts:
    mapped = jax.vmap(dense, in_axes=(0, None))(mapping, rep)  # [R, n, W]
    first = self.rep_layers[0] - 1  # 0-based block
    tokens = tuple(mapped[i - first] if first <= i < first + len(self.rep_layers) else None
                   for i in range(layers))
    return LayerPrompts(tokens, position=1, insert_at=first)

  def text_features(self, clip_params, arch, bank, prompt: dict, *, dtype=jnp.float32,
                    class_chunk: int = 0) -> jax.Array:
    feats = shared_prefix.encode_text_shared_prefix(
        clip_params, bank.prefix[0], bank.suffix, bank.eot_indices, arch, dtype=dtype,
        class_chunk=class_chunk,
        prompts=self._layer_prompts(prompt["r2t"], prompt["rep"], arch.text.layers))
    return clip_model.normalize(feats)

  def image_features(self, clip_params, arch, prompt: dict, images: jax.Array, *,
                     dtype=jnp.float32, remat: bool = False) -> jax.Array:
    """[N, E]: alpha * class-token feature + (1 - alpha) * representation feature, each unit
    norm (so `logits` is MMRL's fused logits exactly; unit norm itself when alpha is 1)."""
    cls, rep = self.image_branches(clip_params, arch, prompt, images, dtype=dtype, remat=remat)
    return cls if self.alpha == 1.0 else self.alpha * cls + (1.0 - self.alpha) * rep

  def image_branches(self, clip_params, arch, prompt: dict, images: jax.Array, *,
                     dtype=jnp.float32, remat: bool = False) -> tuple[jax.Array, jax.Array]:
    """(class-token, representation) unit-norm features [N, E] each (MMRL's training loss
    weighs their logits separately)."""
    tokens = clip_model.image_tokens(
        clip_params, images, arch, remat=remat, dtype=dtype,
        prompts=self._layer_prompts(prompt["r2v"], prompt["rep"], arch.vision.layers))
    cls = tokens[:, 0] @ clip_params["visual_projection"]["kernel"].astype(tokens.dtype)
    rep = tokens[:, 1:1 + self.n_tokens].mean(axis=1) @ prompt["proj_rep"].astype(tokens.dtype)
    wide = clip_model._wide(dtype)
    return clip_model.normalize(cls.astype(wide)), clip_model.normalize(rep.astype(wide))

  def clip_params(self, clip_params):
    """CLIP's parameters as MMRL uses them: logits at the constant scale 100, not CLIP's own."""
    return dict(clip_params, logit_scale=jnp.log(jnp.float32(SCALE)))

  def logits(self, clip_params, image_features, text_features) -> jax.Array:
    del clip_params
    return SCALE * image_features @ text_features.T

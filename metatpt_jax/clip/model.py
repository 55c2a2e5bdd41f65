"""CLIP image and text towers as Flax linen modules, used only through `apply`.

Parameter names mirror the Hugging Face `CLIPModel` state dict (`vision_model.encoder.layers_0.
self_attn.q_proj`, ...), so weight import is renames and transposes in one place
(`metatpt_jax/clip/checkpoint_formats.py`). The functional API at the bottom of this file is what the
rest of the project calls: every function takes the parameter pytree explicitly.
"""
from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from metatpt_jax.clip import layer_prompts, resnet
from metatpt_jax.clip.config import EOT_TOKEN_ID, LAYER_NORM_EPS, LOGIT_SCALE_INIT, CLIPArch

Dtype = Any


def quick_gelu(x):
  return x * jax.nn.sigmoid(1.702 * x)  # OpenAI CLIP's activation


def _activation(name: str):
  return quick_gelu if name == "quick_gelu" else lambda x: jax.nn.gelu(x, approximate=False)


def _wide(dtype):
  """The dtype for norms, softmax and outputs: at least fp32 (fp64 in x64 gradient checks)."""
  return jnp.promote_types(dtype, jnp.float32)


def _layer_norm(name, dtype):
  # Statistics in fp32 whatever the matmul dtype: the mixed-precision policy keeps norms exact.
  return nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=_wide(dtype), param_dtype=_wide(dtype),
                      name=name)


class Attention(nn.Module):
  heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, causal: bool):
    length, width = x.shape[-2:]
    head_dim = width // self.heads
    dense = lambda name: nn.Dense(width, dtype=self.dtype, name=name)
    split = lambda t: t.reshape(t.shape[:-1] + (self.heads, head_dim))
    q = split(dense("q_proj")(x)) * head_dim ** -0.5
    k, v = split(dense("k_proj")(x)), split(dense("v_proj")(x))
    scores = jnp.einsum("...qhd,...khd->...hqk", q, k).astype(_wide(self.dtype))
    if causal:
      mask = jnp.tril(jnp.ones((length, length), bool))
      scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
    out = jnp.einsum("...hqk,...khd->...qhd", weights, v)
    return dense("out_proj")(out.reshape(out.shape[:-2] + (width,)))


class MLP(nn.Module):
  hidden: int
  activation: str
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x)
    h = _activation(self.activation)(h)
    return nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2")(h)


class ResidualBlock(nn.Module):
  """Pre-LN transformer block: x + attn(ln1(x)); x + mlp(ln2(x))."""
  heads: int
  mlp_ratio: int
  activation: str
  causal: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = x + Attention(self.heads, self.dtype, name="self_attn")(
        _layer_norm("layer_norm1", self.dtype)(x), self.causal)
    h = _layer_norm("layer_norm2", self.dtype)(x)
    return x + MLP(x.shape[-1] * self.mlp_ratio, self.activation, self.dtype, name="mlp")(h)


class Encoder(nn.Module):
  layers: int
  heads: int
  mlp_ratio: int
  activation: str
  causal: bool
  remat: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, prompts: layer_prompts.LayerPrompts | None = None):
    """prompts: deep prompt tokens placed before blocks (`layer_prompts`)."""
    block_cls = nn.remat(ResidualBlock) if self.remat else ResidualBlock
    for i in range(self.layers):
      x = layer_prompts.apply(prompts, x, i)
      x = block_cls(self.heads, self.mlp_ratio, self.activation, self.causal, self.dtype,
                    name=f"layers_{i}")(x)
    return x


class VisionTransformer(nn.Module):
  """Images [N, H, W, 3] (CLIP-normalised) -> pooled class-token features [N, width].

  Prompt learners' hooks: `appended` [n, width] tokens after the patch tokens (after the
  positional embedding, before `pre_layrnorm`: MaPLe's visual prompt), `prompts` before blocks
  (`layer_prompts`); `all_tokens` returns every output token after `post_layernorm` [N, T, width]
  (MMRL pools its representation tokens).
  """
  arch: CLIPArch
  remat: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images, prompts=None, appended=None, all_tokens: bool = False):
    v = self.arch.vision
    init = nn.initializers.normal(v.width ** -0.5)
    patches = nn.Conv(v.width, (v.patch_size,) * 2, strides=(v.patch_size,) * 2, use_bias=False,
                      padding="VALID", dtype=self.dtype, name="patch_embedding")(images)
    n = images.shape[0]
    x = patches.reshape(n, -1, v.width)
    cls = self.param("class_embedding", init, (v.width,))
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (n, 1, v.width)), x], axis=1)
    x = x + self.param("position_embedding", init, (v.num_patches + 1, v.width)).astype(x.dtype)
    if appended is not None:
      x = jnp.concatenate([x, jnp.broadcast_to(appended.astype(x.dtype),
                                               (n,) + appended.shape)], axis=1)
    x = _layer_norm("pre_layrnorm", self.dtype)(x)  # sic: the HF name
    x = Encoder(v.layers, v.heads, v.mlp_ratio, self.arch.activation, causal=False,
                remat=self.remat, dtype=self.dtype, name="encoder")(x, prompts)
    return _layer_norm("post_layernorm", self.dtype)(x if all_tokens else x[:, 0])


class TextTransformer(nn.Module):
  """Token embeddings [N, L, width] + EOT positions [N] -> pooled features [N, width]."""
  arch: CLIPArch
  remat: bool = False
  dtype: Dtype = jnp.float32

  def setup(self):
    t = self.arch.text
    self.token_embedding = self.param(
        "token_embedding", nn.initializers.normal(0.02), (t.vocab_size, t.width))
    self.position_embedding = self.param(
        "position_embedding", nn.initializers.normal(0.01), (t.context_length, t.width))
    self.encoder = Encoder(t.layers, t.heads, t.mlp_ratio, self.arch.activation, causal=True,
                           remat=self.remat, dtype=self.dtype)
    self.final_layer_norm = _layer_norm("final_layer_norm", self.dtype)

  def embed_tokens(self, token_ids):
    return jnp.take(self.token_embedding, token_ids, axis=0)

  def __call__(self, token_embeddings, eot_indices, prompts=None):
    """prompts: deep prompt tokens before blocks (`layer_prompts`); an insertion moves the
    pooled position with it."""
    length = token_embeddings.shape[1]
    x = (token_embeddings + self.position_embedding[:length]).astype(self.dtype)
    x = self.final_layer_norm(self.encoder(x, prompts))
    if prompts is not None:
      eot_indices = prompts.shift(eot_indices)
    return jnp.take_along_axis(x, eot_indices[:, None, None], axis=1)[:, 0]


class CLIP(nn.Module):
  """Both towers, their projections and the logit scale."""
  arch: CLIPArch
  remat: bool = False
  dtype: Dtype = jnp.float32

  def setup(self):
    if self.arch.vision.is_resnet:  # its attention pool projects to embed_dim itself
      self.vision_model = resnet.ModifiedResNet(self.arch, self.remat, self.dtype)
    else:
      self.vision_model = VisionTransformer(self.arch, self.remat, self.dtype)
      self.visual_projection = nn.Dense(self.arch.embed_dim, use_bias=False, dtype=self.dtype)
    self.text_model = TextTransformer(self.arch, self.remat, self.dtype)
    self.text_projection = nn.Dense(self.arch.embed_dim, use_bias=False, dtype=self.dtype)
    self.logit_scale = self.param(
        "logit_scale", nn.initializers.constant(LOGIT_SCALE_INIT), ())

  def encode_image(self, images, prompts=None, appended=None):
    if self.arch.vision.is_resnet:
      if prompts is not None or appended is not None:
        raise ValueError("Visual prompt tokens need a ViT image tower; this CLIP is a ResNet.")
      return self.vision_model(images).astype(_wide(self.dtype))
    pooled = self.vision_model(images, prompts, appended)
    return self.visual_projection(pooled).astype(_wide(self.dtype))

  def image_tokens(self, images, prompts=None, appended=None):
    """Every output token after post_layernorm, unprojected: [N, T, width]."""
    if self.arch.vision.is_resnet:
      raise ValueError("Image tokens are a ViT tower's; this CLIP is a ResNet.")
    return self.vision_model(images, prompts, appended, all_tokens=True)

  def embed_tokens(self, token_ids):
    return self.text_model.embed_tokens(token_ids)

  def encode_text_embeddings(self, token_embeddings, eot_indices, prompts=None):
    pooled = self.text_model(token_embeddings, eot_indices, prompts)
    return self.text_projection(pooled).astype(_wide(self.dtype))

  def __call__(self, images, token_ids):
    return (self.encode_image(images),
            self.encode_text_embeddings(self.embed_tokens(token_ids), eot_positions(token_ids)),
            self.logit_scale)


# ------------------------------------------------------------------ functional API
def eot_positions(token_ids: jax.Array) -> jax.Array:
  """First position of the end-of-text token in each row of `token_ids` [N, L] -> [N].

  Same as OpenAI's `argmax(ids)` (EOT has the largest id) and HF's first-EOS rule.
  """
  return jnp.argmax(token_ids == EOT_TOKEN_ID, axis=-1)


def init_params(key: jax.Array, arch: CLIPArch) -> dict:
  """Randomly initialised parameter pytree for `arch` (CLIP's std-0.02 token embeddings)."""
  v = arch.vision
  images = jnp.zeros((1, v.image_size, v.image_size, 3), jnp.float32)
  ids = jnp.zeros((1, arch.text.context_length), jnp.int32)
  return CLIP(arch).init(key, images, ids)["params"]


def encode_image(params, images, arch: CLIPArch, *, remat=False, dtype=jnp.float32,
                 prompts=None, appended=None):
  """Image embeddings (before normalisation).

  Args:
    params: CLIP parameter pytree.
    images: [N, S, S, 3] float32, CLIP-normalised, S = arch.vision.image_size.
    prompts, appended: a prompt learner's visual tokens (`VisionTransformer`); None for CLIP.
  Returns:
    [N, embed_dim] float32.
  """
  chex.assert_rank(images, 4)
  return CLIP(arch, remat, dtype).apply({"params": params}, images, prompts, appended,
                                        method=CLIP.encode_image)


def image_tokens(params, images, arch: CLIPArch, *, remat=False, dtype=jnp.float32,
                 prompts=None, appended=None):
  """Every output token of the vision tower after post_layernorm, unprojected: [N, T, width]."""
  chex.assert_rank(images, 4)
  return CLIP(arch, remat, dtype).apply({"params": params}, images, prompts, appended,
                                        method=CLIP.image_tokens)


def embed_tokens(params, token_ids):
  """Token ids [..., L] int -> token embeddings [..., L, width] (the prompt learner's input)."""
  return jnp.take(params["text_model"]["token_embedding"], token_ids, axis=0)


def encode_text_embeddings(params, token_embeddings, eot_indices, arch: CLIPArch, *,
                           remat=False, dtype=jnp.float32, prompts=None):
  """Text embeddings from token *embeddings*, so learned context vectors can be injected.

  Args:
    token_embeddings: [N, L, width] float32, L <= arch.text.context_length.
    eot_indices: [N] int, position of each row's end-of-text token (the pooled position).
    prompts: a prompt learner's deep text tokens (`layer_prompts.LayerPrompts`), or None.
  Returns:
    [N, embed_dim] float32 (before normalisation).
  """
  chex.assert_rank(token_embeddings, 3)
  chex.assert_rank(eot_indices, 1)
  return CLIP(arch, remat, dtype).apply({"params": params}, token_embeddings, eot_indices,
                                        prompts, method=CLIP.encode_text_embeddings)


def encode_text(params, token_ids, arch: CLIPArch, **kwargs):
  """Text embeddings from token ids [N, L] -> [N, embed_dim], pooled at the first EOT."""
  chex.assert_rank(token_ids, 2)
  return encode_text_embeddings(params, embed_tokens(params, token_ids), eot_positions(token_ids),
                                arch, **kwargs)


def normalize(x, axis=-1):
  return x / jnp.linalg.norm(x, axis=axis, keepdims=True)


def clip_logits(params, image_features, text_features):
  """exp(logit_scale) * cos(image, text): [N, E] x [C, E] -> [N, C]."""
  scale = jnp.exp(params["logit_scale"])
  return scale * normalize(image_features) @ normalize(text_features).T

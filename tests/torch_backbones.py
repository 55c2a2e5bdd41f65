"""PyTorch transcriptions of MaPLe's and MMRL's forward passes, the reference for parity.

Written from the authors' code (muzairkhattak/multimodal-prompt-learning `clip/model.py`
ResidualAttentionBlock_MaPLe / VisionTransformer_MaPLe and `trainers/maple.py` TextEncoder;
yunncheng/MMRL `clip/model_mmrl.py` and `trainers/mmrl.py`), in their order of operations, over
the weights of a transformers CLIPModel: the blocks are our own torch code (no call into the
transformers layers' forward), so nothing is shared with metatpt_jax. Prompt tensors use the
authors' state-dict names and torch's Linear layout (weight [out, in]).
"""
from __future__ import annotations

import torch


def _block(layer, x, causal: bool):
  """OpenAI's pre-LN residual attention block on [B, L, W], from an HF CLIPEncoderLayer's weights."""
  b, n, w = x.shape
  heads = layer.self_attn.num_heads
  d = w // heads
  h = layer.layer_norm1(x)
  split = lambda t: t.view(b, n, heads, d).transpose(1, 2)
  q = split(layer.self_attn.q_proj(h)) * d ** -0.5
  k, v = split(layer.self_attn.k_proj(h)), split(layer.self_attn.v_proj(h))
  scores = q @ k.transpose(-1, -2)
  if causal:  # the authors rebuild the mask for the sequence's current length
    scores = scores + torch.full((n, n), float("-inf")).triu(1)
  out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, w)
  x = x + layer.self_attn.out_proj(out)
  h = layer.layer_norm2(x)
  h = layer.mlp.fc1(h)
  return x + layer.mlp.fc2(h * torch.sigmoid(1.702 * h))


def _linear(state, key, x):
  return x @ state[f"{key}.weight"].T + state[f"{key}.bias"]


def _patch_tokens(model, images):
  """conv1, class token, positional embedding: [B, 1 + P, W] (before ln_pre)."""
  emb = model.vision_model.embeddings
  x = emb.patch_embedding(images).flatten(2).transpose(1, 2)
  cls = emb.class_embedding.expand(x.shape[0], 1, -1)
  return torch.cat([cls, x], 1) + emb.position_embedding.weight


def maple_logits(model, state, images, token_ids, depth: int, n_ctx: int):
  """MaPLe's CustomCLIP logits [B, C]. images [B, 3, S, S] normalised; token_ids [C, 77] of
  "a photo of a {class}." (ctx replaces positions 1..n_ctx)."""
  p = "prompt_learner"
  with torch.no_grad():
    ctx = state[f"{p}.ctx"]
    deep_text = [state[f"{p}.compound_prompts_text.{i}"] for i in range(depth - 1)]
    # vision: shallow prompt appended after the positional embedding, before ln_pre
    x = _patch_tokens(model, images)
    shared = _linear(state, f"{p}.proj", ctx)
    x = model.vision_model.pre_layrnorm(torch.cat([x, shared.expand(x.shape[0], -1, -1)], 1))
    for i, layer in enumerate(model.vision_model.encoder.layers):
      if 1 <= i < depth:  # the last n_ctx tokens replaced by the coupled deep prompt
        deep = _linear(state, f"{p}.compound_prompt_projections.{i - 1}", deep_text[i - 1])
        x = torch.cat([x[:, :-n_ctx], deep.expand(x.shape[0], -1, -1)], 1)
      x = _block(layer, x, causal=False)
    image = model.visual_projection(model.vision_model.post_layernorm(x[:, 0]))
    # text: [SOS, ctx, suffix], deep prompts over positions 1..n_ctx before blocks 1..depth-1
    t = model.text_model
    ids = torch.as_tensor(token_ids, dtype=torch.long)
    x = t.embeddings.token_embedding(ids)
    x = torch.cat([x[:, :1], ctx.expand(x.shape[0], -1, -1), x[:, 1 + n_ctx:]], 1)
    x = x + t.embeddings.position_embedding.weight[:x.shape[1]]
    for i, layer in enumerate(t.encoder.layers):
      if 1 <= i < depth:
        x = torch.cat([x[:, :1], deep_text[i - 1].expand(x.shape[0], -1, -1),
                       x[:, 1 + n_ctx:]], 1)
      x = _block(layer, x, causal=True)
    x = t.final_layer_norm(x)
    text = model.text_projection(x[torch.arange(x.shape[0]), ids.argmax(-1)])
    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    return (model.logit_scale.exp() * image @ text.T).numpy()


def mmrl_logits(model, state, images, token_ids, rep_layers, alpha: float):
  """MMRL's CustomCLIP logits [B, C] (100 * (alpha * cos_cls + (1 - alpha) * cos_rep))."""
  p = "representation_learner"
  with torch.no_grad():
    rep = state[f"{p}.compound_rep_tokens"]
    n = rep.shape[0]

    def with_rep(x, layer_number, counter, proj):
      if layer_number not in rep_layers:
        return x
      tokens = _linear(state, f"{p}.compound_rep_tokens_{proj}.{counter}", rep)
      tokens = tokens.expand(x.shape[0], -1, -1)
      if layer_number == rep_layers[0]:  # inserted after the class / start token
        return torch.cat([x[:, :1], tokens, x[:, 1:]], 1)
      return torch.cat([x[:, :1], tokens, x[:, 1 + n:]], 1)

    x = model.vision_model.pre_layrnorm(_patch_tokens(model, images))
    for i, layer in enumerate(model.vision_model.encoder.layers):
      x = with_rep(x, i + 1, i + 1 - rep_layers[0], "r2vproj")
      x = _block(layer, x, causal=False)
    post = model.vision_model.post_layernorm
    image = model.visual_projection(post(x[:, 0]))
    image_rep = post(x[:, 1:1 + n]).mean(1) @ state["image_encoder.proj_rep"]
    t = model.text_model
    ids = torch.as_tensor(token_ids, dtype=torch.long)
    x = t.embeddings.token_embedding(ids) + t.embeddings.position_embedding.weight
    for i, layer in enumerate(t.encoder.layers):
      x = with_rep(x, i + 1, i + 1 - rep_layers[0], "r2tproj")
      x = _block(layer, x, causal=True)
    x = t.final_layer_norm(x)
    text = model.text_projection(x[torch.arange(x.shape[0]), ids.argmax(-1) + n])
    unit = lambda f: f / f.norm(dim=-1, keepdim=True)
    text = unit(text)
    return (100.0 * (alpha * unit(image) @ text.T
                     + (1 - alpha) * unit(image_rep) @ text.T)).numpy()

"""The Hugging Face config.json <-> `CLIPArch` mapping (transformers' `CLIPConfig` dicts)."""
from __future__ import annotations

import math

from metatpt_jax.clip.checkpoint_formats import CheckpointError
from metatpt_jax.clip.config import (
  EOT_TOKEN_ID,
  LAYER_NORM_EPS,
  LOGIT_SCALE_INIT,
  SOT_TOKEN_ID,
  CLIPArch,
  TextArch,
  VisionArch,
)

# transformers' CLIPTextConfig / CLIPVisionConfig defaults: `save_pretrained` omits them.
_HF_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048,
                         num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77,
                         hidden_act="quick_gelu", layer_norm_eps=1e-5)
_HF_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=12, image_size=224, patch_size=32,
                           hidden_act="quick_gelu", layer_norm_eps=1e-5)



def arch_from_hf_config(config: dict) -> CLIPArch:
  """`CLIPArch` from a transformers `CLIPConfig` dict (the contents of config.json)."""
  model_type = config.get("model_type", "clip")
  if model_type != "clip":
    raise CheckpointError(f"config.json describes a {model_type!r} model; only 'clip' "
                          "(transformers CLIPModel) checkpoints are supported.")
  text = {**_HF_TEXT_DEFAULTS, **(config.get("text_config") or {})}
  vision = {**_HF_VISION_DEFAULTS, **(config.get("vision_config") or {})}
  acts = {text["hidden_act"], vision["hidden_act"]}
  if len(acts) != 1 or not acts <= {"quick_gelu", "gelu"}:
    raise CheckpointError(f"unsupported hidden_act {sorted(acts)}: the model implements one "
                          "activation for both towers, 'quick_gelu' or 'gelu'.")
  for tower, c in (("text", text), ("vision", vision)):
    if not math.isclose(c["layer_norm_eps"], LAYER_NORM_EPS):
      raise CheckpointError(f"{tower} layer_norm_eps {c['layer_norm_eps']} != {LAYER_NORM_EPS}, "
                            "the value the model implements.")
    if c["intermediate_size"] % c["hidden_size"]:
      raise CheckpointError(f"{tower} intermediate_size {c['intermediate_size']} is not a "
                            f"multiple of hidden_size {c['hidden_size']}.")
  try:
    return CLIPArch(
        vision=VisionArch(image_size=vision["image_size"], patch_size=vision["patch_size"],
                          width=vision["hidden_size"], layers=vision["num_hidden_layers"],
                          heads=vision["num_attention_heads"],
                          mlp_ratio=vision["intermediate_size"] // vision["hidden_size"]),
        text=TextArch(vocab_size=text["vocab_size"],
                      context_length=text["max_position_embeddings"], width=text["hidden_size"],
                      layers=text["num_hidden_layers"], heads=text["num_attention_heads"],
                      mlp_ratio=text["intermediate_size"] // text["hidden_size"]),
        embed_dim=config.get("projection_dim", 512), activation=acts.pop())
  except ValueError as err:
    raise CheckpointError(f"config.json is inconsistent: {err}") from err


def hf_config_from_arch(arch: CLIPArch, logit_scale: float = LOGIT_SCALE_INIT) -> dict:
  """A transformers `CLIPConfig` dict describing `arch` (what config.json holds)."""
  if arch.vision.is_resnet:
    raise CheckpointError("Hugging Face has no ResNet CLIP config; save a ResNet tower with "
                          "`save_openai`.")
  v, t = arch.vision, arch.text
  common = dict(hidden_act=arch.activation, layer_norm_eps=LAYER_NORM_EPS, attention_dropout=0.0,
                initializer_range=0.02, initializer_factor=1.0, projection_dim=arch.embed_dim)
  text = dict(model_type="clip_text_model", vocab_size=t.vocab_size, hidden_size=t.width,
              intermediate_size=t.width * t.mlp_ratio, num_hidden_layers=t.layers,
              num_attention_heads=t.heads, max_position_embeddings=t.context_length,
              pad_token_id=1, bos_token_id=SOT_TOKEN_ID, eos_token_id=EOT_TOKEN_ID, **common)
  vision = dict(model_type="clip_vision_model", hidden_size=v.width,
                intermediate_size=v.width * v.mlp_ratio, num_hidden_layers=v.layers,
                num_attention_heads=v.heads, image_size=v.image_size, patch_size=v.patch_size,
                num_channels=3, **common)
  return dict(architectures=["CLIPModel"], model_type="clip", projection_dim=arch.embed_dim,
              logit_scale_init_value=float(logit_scale), initializer_factor=1.0,
              text_config=text, vision_config=vision)


# Keys whose shapes reveal the architecture of a bare state dict.

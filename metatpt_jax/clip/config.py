"""CLIP architecture descriptions.

`CLIPArch` is a frozen (hashable) dataclass, so it can be a static argument of jitted
functions and a field of Flax modules. Presets mirror OpenAI's released models
(OpenAI CLIP's published configurations); `tiny` sizes exist only to make tests fast.
"""
from __future__ import annotations

import dataclasses

# OpenAI CLIP image normalisation constants  # match the reference preprocessing
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
SOT_TOKEN_ID = 49406
EOT_TOKEN_ID = 49407
VOCAB_SIZE = 49408
CONTEXT_LENGTH = 77
LAYER_NORM_EPS = 1e-5  # match PyTorch nn.LayerNorm default used by CLIP
LOGIT_SCALE_INIT = 4.6052  # ln(100): the released models' learned value


@dataclasses.dataclass(frozen=True)
class VisionArch:
  """A ViT image tower, or OpenAI's ModifiedResNet where `resnet_layers` is given: Bottleneck
  blocks per stage (RN50: (3, 4, 6, 3)), `width` the stem's channels (64), `heads` the
  attention pool's (width * 32 // 64), `patch_size` its total stride (32), `layers` 0."""
  image_size: int = 224
  patch_size: int = 16
  width: int = 768
  layers: int = 12
  heads: int = 12
  mlp_ratio: int = 4
  resnet_layers: tuple[int, ...] = ()
  # Added after records were made: left out of a setting's fingerprint while at its default
  # (`bench.fingerprint.result_fields`), so every ViT record keeps its fingerprint.
  later_fields = ("resnet_layers",)

  @property
  def is_resnet(self) -> bool:
    return bool(self.resnet_layers)

  def __post_init__(self):
    if self.is_resnet:
      if self.patch_size != 32 or self.image_size % 32 or self.width % 2:
        raise ValueError(f"A ResNet tower strides by 32 (patch_size=32) over an image_size "
                         f"divisible by 32, from an even width; got patch_size "
                         f"{self.patch_size}, image_size {self.image_size}, width {self.width}.")
      if (self.width * 32) % self.heads:
        raise ValueError(f"The attention pool's width {self.width * 32} is not divisible by "
                         f"heads {self.heads}.")
      return
    if self.image_size % self.patch_size:
      raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size "
                       f"{self.patch_size}; choose sizes whose ratio is whole.")
    if self.width % self.heads:
      raise ValueError(f"vision width {self.width} is not divisible by heads {self.heads}.")

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2


@dataclasses.dataclass(frozen=True)
class TextArch:
  vocab_size: int = VOCAB_SIZE
  context_length: int = CONTEXT_LENGTH
  width: int = 512
  layers: int = 12
  heads: int = 8
  mlp_ratio: int = 4

  def __post_init__(self):
    if self.width % self.heads:
      raise ValueError(f"text width {self.width} is not divisible by heads {self.heads}.")


@dataclasses.dataclass(frozen=True)
class CLIPArch:
  vision: VisionArch = VisionArch()
  text: TextArch = TextArch()
  embed_dim: int = 512
  activation: str = "quick_gelu"  # OpenAI weights; HF configs say "quick_gelu" too

  def __post_init__(self):
    if self.activation not in ("quick_gelu", "gelu"):
      raise ValueError(f"activation must be 'quick_gelu' or 'gelu', got {self.activation!r}.")


PRESETS = {
    "ViT-B/32": CLIPArch(vision=VisionArch(patch_size=32)),
    "ViT-B/16": CLIPArch(vision=VisionArch(patch_size=16)),
    # OpenAI's ResNet-50 CLIP: the ModifiedResNet tower, 1024-d embeddings, the same text tower.
    "RN50": CLIPArch(
        vision=VisionArch(image_size=224, patch_size=32, width=64, layers=0, heads=32,
                          resnet_layers=(3, 4, 6, 3)), embed_dim=1024),
    "ViT-L/14": CLIPArch(
        vision=VisionArch(patch_size=14, width=1024, layers=24, heads=16),
        text=TextArch(width=768, heads=12), embed_dim=768),
    # Pretrained here on Fashion-/Animal-MNIST (checkpoints/small_clip): 8-px patches (17
    # tokens) keep 64-view forward+backward cheap on CPU; text width 64 keeps the
    # 49408-row token table (std-0.02 init) at 12.6 MB; 32 tokens fit every prompt used.
    "small": CLIPArch(
        vision=VisionArch(image_size=32, patch_size=8, width=128, layers=4, heads=4),
        text=TextArch(context_length=32, width=64, layers=4, heads=4), embed_dim=128),
    # For inspecting gradients (notebook 01, the gradient tests): second-order gradients in
    # float64 compile and run in seconds on a CPU; 16 tokens fit "a photo of a <class>." for
    # short class names. With random weights: it is for gradients, not accuracy.
    "micro": CLIPArch(
        vision=VisionArch(image_size=16, patch_size=8, width=32, layers=2, heads=2),
        text=TextArch(context_length=16, width=32, layers=2, heads=2), embed_dim=16),
    # World v3 (emoji artwork, 1,586 classes): 48-px images, 8-px patches (37 tokens), a wider
    # and deeper image tower than "small"; 32 text tokens fit every CLDR name in a caption; a
    # 128-wide text tower (9.7 M parameters in all, most of them the token table) is stored in
    # float16 to stay under 25 MB (a 64-wide one lost 13 points on the development split).
    "small_v3": CLIPArch(
        vision=VisionArch(image_size=48, patch_size=8, width=192, layers=6, heads=6),
        text=TextArch(context_length=32, width=128, layers=4, heads=4), embed_dim=192),
    # Test-only sizes: the real vocabulary and context, so tokenizer output fits unchanged.
    "tiny": CLIPArch(
        vision=VisionArch(image_size=32, patch_size=8, width=64, layers=2, heads=4),
        text=TextArch(width=64, layers=2, heads=4), embed_dim=32),
    "tiny_rn": CLIPArch(
        vision=VisionArch(image_size=64, patch_size=32, width=8, layers=0, heads=4,
                          resnet_layers=(1, 1, 1, 1)),
        text=TextArch(width=64, layers=2, heads=4), embed_dim=32),
}


def get_arch(name: str) -> CLIPArch:
  """Returns the preset architecture called `name` (e.g. "ViT-B/16")."""
  if name not in PRESETS:
    raise ValueError(f"Unknown CLIP architecture {name!r}; known: {sorted(PRESETS)}.")
  return PRESETS[name]

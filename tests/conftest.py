"""Shared fixtures: randomly initialised transformers CLIP models saved as HF checkpoints.

The PyTorch models are the independent reference for parity tests. Each size is built and
saved once per session, the real-size ones only when a test asks for them.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import tempfile

# One XLA compilation cache for the whole test run, shared by the xdist workers and the
# command-line subprocesses the tests start (they inherit the environment): the same tiny
# programs are compiled by many tests and runs. Set before anything imports JAX; a fresh
# directory per run, so nothing carries over between runs. An explicit setting wins.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"metatpt_xla_cache_{os.getppid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# Tests check values, not speed, and most of their time is XLA compiling small programs: with
# the backend's (LLVM's) optimisations off the same programs compile in about half the time
# (measured 143 s -> 78 s on the float64 second-order gradient checks) and give the same
# results within every tolerance here. Inherited by the command-line runs the tests start;
# the benchmark and throughput commands themselves never set it. Unset it to test optimised code:
# METATPT_TEST_XLA_OPT=1.
if os.environ.get("METATPT_TEST_XLA_OPT") != "1" and "xla_backend_optimization_level" not in \
    os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = " ".join(
      filter(None, [os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0"]))

import numpy as np
import pytest

SOT, EOT = 49406, 49407

# transformers CLIPConfig arguments, written out by hand (not from our checkpoint.py) so the
# reference does not share code with what it checks. Keys mirror metatpt_jax.clip.config.PRESETS.
_VIT_B = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, image_size=224, hidden_act="quick_gelu")
_TEXT_B = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
               num_attention_heads=8, max_position_embeddings=77, vocab_size=49408,
               hidden_act="quick_gelu")
HF_CONFIGS = {
    "tiny": dict(
        vision_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                           num_attention_heads=4, image_size=32, patch_size=8,
                           hidden_act="quick_gelu"),
        text_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, vocab_size=49408,
                         hidden_act="quick_gelu"),
        projection_dim=32),
    "ViT-B/32": dict(vision_config=dict(_VIT_B, patch_size=32), text_config=_TEXT_B,
                     projection_dim=512),
    "ViT-B/16": dict(vision_config=dict(_VIT_B, patch_size=16), text_config=_TEXT_B,
                     projection_dim=512),
}


@dataclasses.dataclass
class HFReference:
  """A saved random transformers CLIPModel and its outputs on fixed inputs."""
  name: str
  directory: pathlib.Path
  model: object          # transformers.CLIPModel in eval mode
  images: np.ndarray     # [N, S, S, 3] float32
  token_ids: np.ndarray  # [T, 77] int32
  image_embeds: np.ndarray  # [N, E] unit-norm
  text_embeds: np.ndarray   # [T, E] unit-norm
  logits: np.ndarray        # [N, T] logits_per_image


def make_token_ids(lengths, context_length=77, seed=0) -> np.ndarray:
  """Rows [SOT, random ids, EOT, 0...] with `lengths` ids between SOT and EOT: [T, L] int32."""
  rng = np.random.default_rng(seed)
  ids = np.zeros((len(lengths), context_length), np.int32)
  for row, n in enumerate(lengths):
    ids[row, 0] = SOT
    ids[row, 1:n + 1] = rng.integers(1, SOT, n)
    ids[row, n + 1] = EOT
  return ids


def torch_clip_outputs(model, images, token_ids):
  """(image_embeds, text_embeds, logits_per_image) of a transformers CLIPModel, as NumPy."""
  import torch  # imported on use: test files that never touch PyTorch skip its import time
  with torch.no_grad():
    out = model(input_ids=torch.as_tensor(token_ids, dtype=torch.long),
                pixel_values=torch.as_tensor(np.ascontiguousarray(images.transpose(0, 3, 1, 2))))
  return out.image_embeds.numpy(), out.text_embeds.numpy(), out.logits_per_image.numpy()


def randomize_parameters(model, seed=0):
  """Redraws every parameter so that each one visibly matters.

  transformers' init leaves biases at 0 and LayerNorm scales at 1 (a swapped q/k bias or a
  scale/bias mix-up would go unseen) and keeps attention near uniform, so the class token
  barely depends on the image. Here: Linear/Conv weights N(0, 1/fan_in) (unit-scale
  activations, peaked attention), biases N(0, 0.1^2), LayerNorm scales 1 + N(0, 0.2^2),
  embeddings N(0, 0.5^2).
  """
  import torch  # imported on use: test files that never touch PyTorch skip its import time
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=generator)
      if name == "logit_scale":
        continue
      if name.endswith("weight") and param.ndim >= 2 and "embedding" not in name:
        param.copy_(noise * (param[0].numel() ** -0.5))
      elif "norm" in name and name.endswith("weight"):
        param.copy_(1.0 + 0.2 * noise)
      elif name.endswith("bias"):
        param.copy_(0.1 * noise)
      else:  # token, position and class embeddings
        param.copy_(0.5 * noise)


def _build_reference(name, directory) -> HFReference:
  import torch
  import transformers
  torch.manual_seed(0)
  config = transformers.CLIPConfig(**HF_CONFIGS[name], logit_scale_init_value=4.6052)
  model = transformers.CLIPModel(config).eval()
  randomize_parameters(model)
  model.save_pretrained(directory)  # safetensors, the transformers default
  size = config.vision_config.image_size
  rng = np.random.default_rng(1)
  images = rng.normal(size=(2, size, size, 3)).astype(np.float32)
  token_ids = make_token_ids([1, 6, 20, 75])
  return HFReference(name, pathlib.Path(directory), model, images, token_ids,
                     *torch_clip_outputs(model, images, token_ids))


@pytest.fixture(scope="session")
def hf_reference(tmp_path_factory):
  """`hf_reference(name)` -> HFReference, built once per session per name."""
  cache = {}

  def get(name: str) -> HFReference:
    if name not in cache:
      directory = tmp_path_factory.mktemp("hf_" + name.replace("/", "_").replace("-", "_"))
      cache[name] = _build_reference(name, directory)
    return cache[name]

  return get


@pytest.fixture(scope="session")
def tiny_hf_dir(hf_reference) -> pathlib.Path:
  """Directory of a tiny HF CLIP checkpoint (config.json + model.safetensors). Do not modify."""
  return hf_reference("tiny").directory


@pytest.fixture(scope="module")
def x64():
  """JAX in float64 for a whole test module (module scope, so module fixtures can use it)."""
  import jax  # imported on use, like torch above
  with jax.enable_x64(True):
    yield

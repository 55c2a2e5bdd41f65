"""Numerical parity of our Flax CLIP with transformers' PyTorch CLIPModel, in fp32.

Every checkpoint format `load_clip` reads (HF safetensors, HF pytorch_model.bin, OpenAI state
dicts) and the `save_hf` export are checked against the same randomly initialised PyTorch models
(tests/conftest.py). The OpenAI-format files are made here with a mapping of the test's own,
independent of metatpt_jax/clip/checkpoint.py.
"""
from __future__ import annotations

import functools
import json
import re
import shutil

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from metatpt_jax.clip import checkpoint, config, model
from tests.conftest import torch_clip_outputs

# Unit-norm embeddings: fp32 accumulation order differs between XLA and torch (matmul blocking,
# softmax and LayerNorm reductions) and compounds over 12 layers. Measured max abs errors on
# CPU (image / text): tiny 1.9e-7 / 1.6e-7; B/32 1.3e-7 / 1.9e-7; B/16 1.3e-7 / 1.9e-7, and the
# same for every other format and the save_hf round trip. 1e-4 leaves room for other BLAS
# builds and backends, yet is far below what a mapping bug costs (a q/k bias swap in one layer
# of the tiny model: 7.9e-3; a LayerNorm scale/bias swap: 0.26).
EMBED_ATOL = 1e-4
# Logits are exp(logit_scale) * cos, ~100x the embedding error; checked relative to their
# largest magnitude. Measured: at most 1.6e-6.
LOGITS_RTOL = 1e-4

PARITY_SIZES = ["tiny", pytest.param("ViT-B/32", marks=pytest.mark.slow),
                pytest.param("ViT-B/16", marks=pytest.mark.slow)]


@functools.partial(jax.jit, static_argnames="arch")
def _our_outputs(params, images, token_ids, arch):
  image = model.normalize(model.encode_image(params, images, arch))
  text = model.normalize(model.encode_text(params, token_ids, arch))
  return image, text, model.clip_logits(params, image, text)


def our_outputs(params, arch, images, token_ids):
  # CPU matmuls are fp32 anyway; on GPU/TPU the default would be TF32/bf16 passes, and the
  # fp32 tolerances below would not hold.
  with jax.default_matmul_precision("highest"):
    return [np.asarray(x) for x in _our_outputs(params, images, token_ids, arch)]


def assert_parity(ours, reference_outputs, label):
  image, text, logits = ours
  ref_image, ref_text, ref_logits = reference_outputs
  # The reference must tell its inputs apart, or agreeing with it would prove little.
  spread = min(np.abs(ref_image[0] - ref_image[1]).max(),
               np.abs(ref_text[0] - ref_text[-1]).max())
  assert spread > 100 * EMBED_ATOL, spread
  errors = dict(image=np.abs(image - ref_image).max(), text=np.abs(text - ref_text).max(),
                logits_rel=np.abs(logits - ref_logits).max() / np.abs(ref_logits).max())
  print(f"{label}: reference spread {spread:.2e}; max abs error image {errors['image']:.2e}, "
        f"text {errors['text']:.2e}; logits relative {errors['logits_rel']:.2e}")
  assert errors["image"] <= EMBED_ATOL, errors
  assert errors["text"] <= EMBED_ATOL, errors
  assert errors["logits_rel"] <= LOGITS_RTOL, errors


def reference_outputs(ref):
  return ref.image_embeds, ref.text_embeds, ref.logits


_OPENAI_RENAMES = [
    (r"^vision_model\.embeddings\.patch_embedding\.weight$", "visual.conv1.weight"),
    (r"^vision_model\.embeddings\.class_embedding$", "visual.class_embedding"),
    (r"^vision_model\.embeddings\.position_embedding\.weight$", "visual.positional_embedding"),
    (r"^vision_model\.pre_layrnorm\.", "visual.ln_pre."),
    (r"^vision_model\.post_layernorm\.", "visual.ln_post."),
    (r"^vision_model\.encoder\.layers\.", "visual.transformer.resblocks."),
    (r"^text_model\.encoder\.layers\.", "transformer.resblocks."),
    (r"^text_model\.embeddings\.token_embedding\.weight$", "token_embedding.weight"),
    (r"^text_model\.embeddings\.position_embedding\.weight$", "positional_embedding"),
    (r"^text_model\.final_layer_norm\.", "ln_final."),
    (r"\.self_attn\.out_proj\.", ".attn.out_proj."),
    (r"\.layer_norm1\.", ".ln_1."), (r"\.layer_norm2\.", ".ln_2."),
    (r"\.mlp\.fc1\.", ".mlp.c_fc."), (r"\.mlp\.fc2\.", ".mlp.c_proj."),
]


def _rename(key):
  for pattern, replacement in _OPENAI_RENAMES:
    key = re.sub(pattern, replacement, key)
  return key


def hf_to_openai(hf_state_dict, image_size):
  """An OpenAI-CLIP-style state dict (as in ViT-B-16.pt) from a HF CLIPModel state dict."""
  out, fused = {}, {}
  for key, value in hf_state_dict.items():
    if key in ("visual_projection.weight", "text_projection.weight"):
      # OpenAI computes x @ proj with proj [W, E]; HF's Linear stores [E, W].
      out["visual.proj" if key.startswith("visual") else "text_projection"] = value.T.clone()
      continue
    m = re.match(r"(.*)\.self_attn\.([qkv])_proj\.(weight|bias)$", key)
    if m:
      fused.setdefault(_rename(f"{m.group(1)}.attn.in_proj_{m.group(3)}"), {})[m.group(2)] = value
      continue
    out[_rename(key)] = value.clone()
  for key, parts in fused.items():
    out[key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
  # OpenAI's TorchScript archives carry these integers in their state dict.
  out.update(input_resolution=torch.tensor(image_size), context_length=torch.tensor(77),
             vocab_size=torch.tensor(49408))
  return out


class _Archive(torch.nn.Module):
  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return x


def save_torchscript(state_dict, path):
  """Saves `state_dict` inside a TorchScript archive, the form of OpenAI's released .pt files."""
  root = _Archive()
  for key, value in state_dict.items():
    *parents, leaf = key.split(".")
    node = root
    for name in parents:
      if name not in node._modules:
        node.add_module(name, torch.nn.Module())
      node = node._modules[name]
    node.register_buffer(leaf, value)
  torch.jit.save(torch.jit.script(root), str(path))


@pytest.mark.parametrize("name", PARITY_SIZES)
def test_hf_safetensors_parity(hf_reference, name):
  ref = hf_reference(name)
  params, arch = checkpoint.load_clip(ref.directory)
  assert arch == config.get_arch(name)
  assert_parity(our_outputs(params, arch, ref.images, ref.token_ids), reference_outputs(ref),
                f"HF safetensors {name}")


def test_loaded_params_have_init_structure(tiny_hf_dir):
  params, arch = checkpoint.load_clip(tiny_hf_dir)
  init = jax.eval_shape(functools.partial(model.init_params, arch=arch), jax.random.key(0))
  shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)
  assert shapes(params) == shapes(init)


def test_hf_pytorch_bin_parity(hf_reference, tmp_path):
  ref = hf_reference("tiny")
  torch.save(ref.model.state_dict(), tmp_path / "pytorch_model.bin")
  shutil.copy(ref.directory / "config.json", tmp_path / "config.json")
  params, arch = checkpoint.load_clip(tmp_path)
  assert_parity(our_outputs(params, arch, ref.images, ref.token_ids), reference_outputs(ref),
                "HF pytorch_model.bin tiny")


def test_hf_sharded_safetensors_parity(hf_reference, tmp_path):
  """Large checkpoints come as shards listed in model.safetensors.index.json."""
  ref = hf_reference("tiny")
  tensors = load_file(str(ref.directory / "model.safetensors"))
  shards = {"model-00001-of-00002.safetensors": {}, "model-00002-of-00002.safetensors": {}}
  weight_map = {}
  for i, (key, value) in enumerate(sorted(tensors.items())):
    shard = sorted(shards)[i % 2]
    shards[shard][key] = value
    weight_map[key] = shard
  for shard, shard_tensors in shards.items():
    save_file(shard_tensors, str(tmp_path / shard), metadata={"format": "pt"})
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
  shutil.copy(ref.directory / "config.json", tmp_path / "config.json")
  params, arch = checkpoint.load_clip(tmp_path)
  assert_parity(our_outputs(params, arch, ref.images, ref.token_ids), reference_outputs(ref),
                "HF sharded safetensors tiny")


@pytest.mark.parametrize("name", ["tiny", pytest.param("ViT-B/16", marks=pytest.mark.slow)])
def test_openai_state_dict_parity(hf_reference, tmp_path, name):
  ref = hf_reference(name)
  image_size = ref.images.shape[1]
  torch.save(hf_to_openai(ref.model.state_dict(), image_size), tmp_path / "clip.pt")
  # Heads are not in the weights: OpenAI's width // 64 rule is right for B/16 but not for
  # the tiny test sizes (width 64, 4 heads), which must say so.
  requested = config.get_arch(name) if name == "tiny" else None
  params, arch = checkpoint.load_clip(tmp_path / "clip.pt", arch=requested)
  assert arch == config.get_arch(name)
  assert_parity(our_outputs(params, arch, ref.images, ref.token_ids), reference_outputs(ref),
                f"OpenAI state dict {name}")


def test_openai_state_dict_wrapped_and_prefixed(hf_reference, tmp_path):
  """DataParallel's `module.` prefix and a training checkpoint's {"state_dict": ...}."""
  ref = hf_reference("tiny")
  state_dict = {"module." + k: v for k, v in hf_to_openai(ref.model.state_dict(), 32).items()}
  torch.save({"epoch": 3, "state_dict": state_dict}, tmp_path / "epoch_3.pt")
  params, arch = checkpoint.load_clip(tmp_path / "epoch_3.pt", arch=config.get_arch("tiny"))
  assert_parity(our_outputs(params, arch, ref.images, ref.token_ids), reference_outputs(ref),
                "wrapped OpenAI state dict tiny")


def test_hf_named_state_dict_file(hf_reference, tmp_path):
  ref = hf_reference("tiny")
  torch.save(ref.model.state_dict(), tmp_path / "weights.bin")
  params, arch = checkpoint.load_clip(tmp_path / "weights.bin", arch=config.get_arch("tiny"))
  assert_parity(our_outputs(params, arch, ref.images, ref.token_ids), reference_outputs(ref),
                "HF-named state-dict file tiny")


@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")
def test_openai_torchscript_archive(hf_reference, tmp_path):
  ref = hf_reference("tiny")
  save_torchscript(hf_to_openai(ref.model.state_dict(), 32), tmp_path / "ViT-tiny.pt")
  params, arch = checkpoint.load_clip(tmp_path / "ViT-tiny.pt", arch=config.get_arch("tiny"))
  assert_parity(our_outputs(params, arch, ref.images, ref.token_ids), reference_outputs(ref),
                "OpenAI TorchScript archive tiny")


@pytest.mark.parametrize("name", ["tiny", pytest.param("ViT-B/16", marks=pytest.mark.slow)])
def test_save_hf_round_trip(hf_reference, tmp_path, name):
  ref = hf_reference(name)
  params, arch = checkpoint.load_clip(ref.directory)
  checkpoint.save_hf(params, arch, tmp_path)
  exported = transformers.CLIPModel.from_pretrained(tmp_path).eval()
  ours = our_outputs(params, arch, ref.images, ref.token_ids)
  assert_parity(ours, torch_clip_outputs(exported, ref.images, ref.token_ids),
                f"save_hf -> CLIPModel.from_pretrained {name}")
  reloaded, reloaded_arch = checkpoint.load_clip(tmp_path)
  assert reloaded_arch == arch
  jax.tree.map(np.testing.assert_array_equal, reloaded, params)
  saved_config = json.loads((tmp_path / "config.json").read_text())
  assert saved_config["text_config"]["eos_token_id"] == config.EOT_TOKEN_ID
  assert saved_config["text_config"]["bos_token_id"] == config.SOT_TOKEN_ID


@pytest.mark.parametrize("name", sorted(config.PRESETS))
def test_hf_config_round_trip(name):
  arch = config.get_arch(name)
  if arch.vision.is_resnet:  # transformers has no ResNet CLIP
    with pytest.raises(checkpoint.CheckpointError, match="no ResNet CLIP config"):
      checkpoint.hf_config_from_arch(arch)
    return
  hf_config = checkpoint.hf_config_from_arch(arch)
  assert checkpoint.arch_from_hf_config(hf_config) == arch
  # transformers accepts it and reads the same sizes.
  parsed = transformers.CLIPConfig(**hf_config)
  assert parsed.vision_config.patch_size == arch.vision.patch_size
  assert parsed.text_config.num_attention_heads == arch.text.heads
  assert parsed.projection_dim == arch.embed_dim

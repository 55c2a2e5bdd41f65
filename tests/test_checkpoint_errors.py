"""Every way `load_clip` can fail says what is wrong, in a CheckpointError (a ValueError)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from metatpt_jax.clip import checkpoint, config
from metatpt_jax.clip.checkpoint import CheckpointError

KEY = "vision_model.encoder.layers.1.mlp.fc1.weight"


@pytest.fixture
def tiny_copy(tiny_hf_dir, tmp_path):
  """A private copy of the tiny HF checkpoint, free to damage."""
  return shutil.copytree(tiny_hf_dir, tmp_path / "tiny")


def _rewrite(directory, edit):
  """Applies `edit` to the state dict in directory/model.safetensors."""
  path = directory / "model.safetensors"
  tensors = load_file(str(path))
  edit(tensors)
  save_file(tensors, str(path), metadata={"format": "pt"})


def test_is_a_value_error():
  assert issubclass(CheckpointError, ValueError)


def test_missing_path(tmp_path):
  with pytest.raises(CheckpointError, match="does not exist.*Hugging Face.*state-dict file"):
    checkpoint.load_clip(tmp_path / "no_such_checkpoint")


def test_directory_without_weights(tiny_copy):
  (tiny_copy / "model.safetensors").unlink()
  (tiny_copy / "README.md").write_text("weights go here")
  with pytest.raises(CheckpointError,
                     match=r"no Hugging Face CLIP checkpoint.*found \[README.md, config.json\]"):
    checkpoint.load_clip(tiny_copy)


def test_truncated_safetensors(tiny_copy):
  path = tiny_copy / "model.safetensors"
  path.write_bytes(path.read_bytes()[:-1000])
  with pytest.raises(CheckpointError, match="corrupt or truncated.*re-download"):
    checkpoint.load_clip(tiny_copy)


def test_garbage_safetensors(tiny_copy):
  (tiny_copy / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
  with pytest.raises(CheckpointError, match="corrupt or truncated"):
    checkpoint.load_clip(tiny_copy)


def test_garbage_torch_file(tmp_path):
  (tmp_path / "clip.pt").write_bytes(b"not a pickle" * 100)
  with pytest.raises(CheckpointError, match="corrupt or truncated"):
    checkpoint.load_clip(tmp_path / "clip.pt")


def test_other_architecture(tiny_hf_dir):
  with pytest.raises(CheckpointError, match="another architecture") as info:
    checkpoint.load_clip(tiny_hf_dir, arch=config.get_arch("ViT-B/16"))
  message = str(info.value)
  for difference in ("vision.image_size: checkpoint 32, requested 224",
                     "vision.patch_size: checkpoint 8, requested 16",
                     "vision.width: checkpoint 64, requested 768", "embed_dim"):
    assert difference in message


def test_other_architecture_state_dict_file(tiny_hf_dir, tmp_path):
  torch.save({k: torch.from_numpy(v) for k, v in
              load_file(str(tiny_hf_dir / "model.safetensors")).items()}, tmp_path / "w.bin")
  with pytest.raises(CheckpointError, match="vision.layers: checkpoint 2, requested 12"):
    checkpoint.load_clip(tmp_path / "w.bin", arch=config.get_arch("ViT-B/32"))


def test_missing_key_named(tiny_copy):
  _rewrite(tiny_copy, lambda t: t.pop(KEY))
  with pytest.raises(CheckpointError, match=f"1 missing key\\(s\\): {KEY}"):
    checkpoint.load_clip(tiny_copy)


def test_unexpected_key_named(tiny_copy):
  _rewrite(tiny_copy, lambda t: t.update({"vision_model.extra_head.weight": np.zeros(3)}))
  with pytest.raises(CheckpointError,
                     match="1 unexpected key\\(s\\): vision_model.extra_head.weight"):
    checkpoint.load_clip(tiny_copy)


def test_many_missing_keys_are_counted(tiny_copy):
  _rewrite(tiny_copy, lambda t: [t.pop(k) for k in list(t) if ".layers.1." in k])
  with pytest.raises(CheckpointError, match=r"32 missing key\(s\): .* and 22 more"):
    checkpoint.load_clip(tiny_copy)


def test_shape_mismatch(tiny_copy):
  _rewrite(tiny_copy, lambda t: t.update({KEY: np.zeros((256, 32), np.float32)}))
  with pytest.raises(CheckpointError, match=f"{KEY}: expected \\(256, 64\\), got \\(256, 32\\)"):
    checkpoint.load_clip(tiny_copy)


def test_unsupported_config(tiny_copy):
  path = tiny_copy / "config.json"
  hf_config = json.loads(path.read_text())
  hf_config["vision_config"]["hidden_act"] = "gelu_new"
  path.write_text(json.dumps(hf_config))
  with pytest.raises(CheckpointError, match="unsupported hidden_act"):
    checkpoint.load_clip(tiny_copy)


def test_openai_missing_in_proj_named(tiny_hf_dir, tmp_path):
  """Errors for OpenAI-format files name OpenAI's keys, not HF's."""
  params, arch = checkpoint.load_clip(tiny_hf_dir)
  hf = checkpoint.hf_state_dict_from_params(params, arch)
  state_dict = {"visual.conv1.weight": hf["vision_model.embeddings.patch_embedding.weight"]}
  torch.save({k: torch.from_numpy(v) for k, v in state_dict.items()}, tmp_path / "clip.pt")
  with pytest.raises(CheckpointError, match="missing key.*visual.positional_embedding"):
    checkpoint.load_clip(tmp_path / "clip.pt")


def test_unrecognised_key_names(tmp_path):
  torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pt")
  with pytest.raises(CheckpointError, match="unrecognised key names.*encoder.weight"):
    checkpoint.load_clip(tmp_path / "other.pt")


def test_an_incomplete_resnet_clip_names_what_is_missing(tmp_path):
  torch.save({"visual.conv1.weight": torch.zeros(32, 3, 3, 3),
              "visual.layer1.0.conv1.weight": torch.zeros(2)}, tmp_path / "RN50.pt")
  with pytest.raises(CheckpointError, match="cannot infer the ResNet architecture, 6 missing "
                                            "key.*visual.attnpool.positional_embedding"):
    checkpoint.load_clip(tmp_path / "RN50.pt")


def test_a_timm_tower_clip_is_refused(tmp_path):
  torch.save({"visual.trunk.stem.0.weight": torch.zeros(2)}, tmp_path / "convnext.pt")
  with pytest.raises(CheckpointError, match="timm-tower CLIP"):
    checkpoint.load_clip(tmp_path / "convnext.pt")


def test_save_hf_rejects_params_of_another_arch(tiny_hf_dir, tmp_path):
  params, _ = checkpoint.load_clip(tiny_hf_dir)
  with pytest.raises(CheckpointError, match="expected"):
    checkpoint.save_hf(params, config.get_arch("ViT-B/32"), tmp_path)

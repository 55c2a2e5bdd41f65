"""CLIP's ResNet image tower (RN50): OpenAI checkpoint import and forward parity with a PyTorch
transcription of OpenAI's ModifiedResNet (tests/torch_resnet.py, itself checked against OpenAI's
own modules loading its state dict strictly, to 4.2e-7 at RN50) on random weights, and every
test-time method on a ResNet CLIP."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from metatpt_jax import prompts
from metatpt_jax.clip import checkpoint, config, model
from metatpt_jax.frozen_clip import FrozenCLIP, ModelSpec
from tests import method_helpers as h
from tests import test_every_method, torch_resnet
from tests.test_backbone_methods import _PATHS

SIZES = ["tiny_rn", pytest.param("RN50", marks=pytest.mark.slow)]


def _text_state_dict(arch, seed=1) -> dict:
  """Random text-tower weights under OpenAI's names (the test's own mapping)."""
  gen = torch.Generator().manual_seed(seed)
  t, e = arch.text, arch.embed_dim
  r = lambda *shape, scale=1.0: scale * torch.randn(*shape, generator=gen)
  sd = {"token_embedding.weight": r(t.vocab_size, t.width, scale=0.02),
        "positional_embedding": r(t.context_length, t.width, scale=0.01),
        "ln_final.weight": 1 + r(t.width, scale=0.1), "ln_final.bias": r(t.width, scale=0.1),
        "text_projection": r(t.width, e, scale=t.width ** -0.5), "logit_scale": torch.tensor(4.6)}
  for i in range(t.layers):
    p = f"transformer.resblocks.{i}"
    hidden = t.width * t.mlp_ratio
    sd.update({f"{p}.attn.in_proj_weight": r(3 * t.width, t.width, scale=t.width ** -0.5),
               f"{p}.attn.in_proj_bias": r(3 * t.width, scale=0.1),
               f"{p}.attn.out_proj.weight": r(t.width, t.width, scale=t.width ** -0.5),
               f"{p}.attn.out_proj.bias": r(t.width, scale=0.1),
               f"{p}.ln_1.weight": 1 + r(t.width, scale=0.1), f"{p}.ln_1.bias": r(t.width),
               f"{p}.mlp.c_fc.weight": r(hidden, t.width, scale=t.width ** -0.5),
               f"{p}.mlp.c_fc.bias": r(hidden, scale=0.1),
               f"{p}.mlp.c_proj.weight": r(t.width, hidden, scale=hidden ** -0.5),
               f"{p}.mlp.c_proj.bias": r(t.width, scale=0.1),
               f"{p}.ln_2.weight": 1 + r(t.width, scale=0.1), f"{p}.ln_2.bias": r(t.width)})
  return sd


@pytest.mark.parametrize("name", SIZES)
def test_resnet_checkpoint_import_and_image_features_match_openai(name, tmp_path):
  arch = config.get_arch(name)
  v = arch.vision
  dims = dict(layers=v.resnet_layers, width=v.width, image_size=v.image_size,
              embed_dim=arch.embed_dim)
  state = dict(torch_resnet.random_visual_state_dict(**dims, seed=0), **_text_state_dict(arch))
  torch.save(state, tmp_path / f"{name}.pt")
  params, loaded = checkpoint.load_clip(tmp_path / f"{name}.pt", arch=arch)
  assert loaded == arch
  images = np.random.default_rng(0).normal(size=(2, v.image_size, v.image_size, 3))
  images = images.astype(np.float32)
  want = torch_resnet.encode_image(state, torch.as_tensor(images.transpose(0, 3, 1, 2).copy()),
                                   **dims)
  with jax.default_matmul_precision("highest"):
    ours = np.asarray(jax.jit(model.encode_image, static_argnums=2)(params, images, arch))
  # Random weights make the pooled feature mostly image-independent at RN50 (the two images
  # differ by 0.4 % of its largest entry; 5 % on tiny_rn), so the error is bounded against
  # that difference, not only the feature's size. Measured: 7.3e-7 of the largest entry,
  # 1.9e-4 of the difference (RN50); 5.1e-7 and 1.0e-5 (tiny_rn).
  scale, spread = np.abs(want).max(), np.abs(want[0] - want[1]).max()
  np.testing.assert_allclose(ours, want, atol=min(1e-5 * scale, 1e-2 * spread))
  # and back out under the same names: save_openai -> load_clip is exact
  again, _ = checkpoint.load_clip(checkpoint.save_openai(params, arch,
                                                         tmp_path / "again.safetensors"), arch)
  jax.tree.map(np.testing.assert_array_equal, params, again)


def _rn_frozen(**kwargs):
  arch = config.get_arch("tiny_rn")
  params = dict(model.init_params(jax.random.key(0), arch), logit_scale=jnp.log(30.0))
  bank = prompts.build_prompt_bank(params, arch, h.CLASS_NAMES, n_ctx=4)
  ctx = prompts.init_context(params, arch, n_ctx=4, init="a photo of a")
  return FrozenCLIP(params, bank, ctx), ModelSpec(arch)


@pytest.mark.parametrize("kind", sorted(_PATHS))
def test_every_method_runs_on_a_resnet_clip(kind, monkeypatch):
  arch = config.get_arch("tiny_rn")
  monkeypatch.setattr(h, "tiny_frozen", _rn_frozen)
  monkeypatch.setattr(h, "TEST_ARCH", arch)
  monkeypatch.setattr(h, "random_images", lambda seed, num: jax.random.uniform(
      jax.random.key(seed), (num, arch.vision.image_size, arch.vision.image_size, 3)))
  path = _PATHS[kind]
  test_every_method.run_code_path(path, *test_every_method.PATHS[path])


def test_prompt_backbones_refuse_a_resnet_clip():
  from metatpt_jax import backbones
  from metatpt_jax.errors import UserError
  for name in ("maple", "mmrl"):
    with pytest.raises(UserError, match="ViT image tower; this CLIP's is a ResNet"):
      backbones.get(name).check(config.get_arch("RN50"))

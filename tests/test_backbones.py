"""MaPLe, MMRL and CoOp prompt backbones: Dassl checkpoint import and forward parity with a
PyTorch transcription of each authors' forward pass (tests/torch_backbones.py), on random CLIP
weights of the tiny model and of ViT-B/16, logits to fp32 tolerance (measured: at most 4.7e-6 of
the largest logit; MaPLe depth 3 and 9, MMRL fused and class-token only).

The Dassl files are written here with the authors' key names and torch layouts (a mapping of the
test's own), holding, like the released ones, more than the prompt learner.
"""
from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from metatpt_jax import backbones, prompts
from metatpt_jax.backbones import dassl
from metatpt_jax.clip import checkpoint
from metatpt_jax.clip.tokenizer import default_tokenizer
from metatpt_jax.errors import UserError
from tests import torch_backbones
from tests.test_clip_parity import LOGITS_RTOL

CLASSES = ["cat", "sea lion", "golden retriever", "fire truck"]
SIZES = ["tiny", pytest.param("ViT-B/16", marks=pytest.mark.slow)]


def _randn(gen, *shape, scale=1.0):
  return scale * torch.randn(*shape, generator=gen)


def _linear(state, key, gen, fan_in, fan_out):
  state[f"{key}.weight"] = _randn(gen, fan_out, fan_in, scale=fan_in ** -0.5)
  state[f"{key}.bias"] = _randn(gen, fan_out, scale=0.1)


def maple_state(arch, depth, n_ctx=2, seed=0) -> dict:
  gen = torch.Generator().manual_seed(seed)
  tw, vw, p = arch.text.width, arch.vision.width, "prompt_learner"
  state = {f"{p}.ctx": _randn(gen, n_ctx, tw, scale=0.5),
           f"{p}.token_prefix": torch.zeros(3, 1, tw),  # buffers: rebuilt from class names
           f"{p}.token_suffix": torch.zeros(3, 74, tw),
           "image_encoder.conv1.weight": torch.zeros(vw, 3, 16, 16),  # CLIP: not read
           "logit_scale": torch.tensor(4.6)}
  _linear(state, f"{p}.proj", gen, tw, vw)
  for i in range(depth - 1):
    state[f"{p}.compound_prompts_text.{i}"] = _randn(gen, n_ctx, tw, scale=0.5)
    _linear(state, f"{p}.compound_prompt_projections.{i}", gen, tw, vw)
  return state


def mmrl_state(arch, n_layers, n_tokens=5, rep_dim=512, seed=0) -> dict:
  gen = torch.Generator().manual_seed(seed)
  p = "representation_learner"
  state = {f"{p}.compound_rep_tokens": _randn(gen, n_tokens, rep_dim, scale=0.5),
           "image_encoder.proj_rep": _randn(gen, arch.vision.width, arch.embed_dim,
                                            scale=arch.vision.width ** -0.5),
           "prompt_embeddings": torch.zeros(3, 77, arch.text.width)}
  for i in range(n_layers):
    _linear(state, f"{p}.compound_rep_tokens_r2vproj.{i}", gen, rep_dim, arch.vision.width)
    _linear(state, f"{p}.compound_rep_tokens_r2tproj.{i}", gen, rep_dim, arch.text.width)
  return state


def save_dassl(path, state, module_prefix=False):
  path.parent.mkdir(parents=True, exist_ok=True)
  state = {("module." if module_prefix else "") + k: v for k, v in state.items()}
  torch.save({"state_dict": state, "epoch": 2, "optimizer": None, "scheduler": None,
              "val_result": None}, path)
  return str(path)


def _token_ids(template):
  return np.asarray(default_tokenizer()([template.format(c) for c in CLASSES],
                                        context_length=77))


def _ours(backbone, params, arch, prompt, images):
  with jax.default_matmul_precision("highest"):
    bank = backbone.bank(params, arch, CLASSES)
    text = backbone.text_features(params, arch, bank, prompt)
    image = backbone.image_features(params, arch, prompt, images)
    return np.asarray(backbone.logits(params, image, text))


def _assert_close(ours, ref):
  atol = LOGITS_RTOL * np.abs(ref).max()
  assert np.abs(ref[0] - ref[1]).max() > 100 * atol  # the reference tells its images apart
  np.testing.assert_allclose(ours, ref, atol=atol)
  return np.abs(ours - ref).max() / np.abs(ref).max()


def _nchw(images):
  return torch.as_tensor(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def _maple_depths(size):
  return (2,) if size == "tiny" else (3, 9)


@pytest.mark.parametrize("size", SIZES)
def test_maple_checkpoint_import_and_forward_match_the_authors(size, hf_reference, tmp_path):
  ref = hf_reference(size)
  params, arch = checkpoint.load_clip(ref.directory)
  for depth in _maple_depths(size):
    state = maple_state(arch, depth)
    path = save_dassl(tmp_path / f"d{depth}" / "MultiModalPromptLearner" / "model.pth.tar-2",
                      state, module_prefix=depth == 2)
    backbone = backbones.get("maple", depth=depth)
    prompt = dassl.load_prompt(path, backbone, params, arch)
    ours = _ours(backbone, params, arch, prompt, ref.images)
    want = torch_backbones.maple_logits(ref.model, state, _nchw(ref.images),
                                        _token_ids("a photo of a {}."), depth, n_ctx=2)
    _assert_close(ours, want)
    # the deep prompts matter (measured 1.3-4.5 logits), so their placement is what is checked
    shallow = dict(prompt, deep_text=np.zeros_like(prompt["deep_text"]))
    assert np.abs(_ours(backbone, params, arch, shallow, ref.images) - ours).max() > 0.1


@pytest.mark.parametrize("size", SIZES)
def test_mmrl_checkpoint_import_and_forward_match_the_authors(size, hf_reference, tmp_path):
  ref = hf_reference(size)
  params, arch = checkpoint.load_clip(ref.directory)
  rep_layers = (2,) if size == "tiny" else tuple(range(6, 13))
  state = mmrl_state(arch, len(rep_layers))
  path = save_dassl(tmp_path / "MultiModalRepresentationLearner" / "model.pth.tar-1", state)
  for alpha in (1.0, 0.7):  # class token alone (cross-dataset), fused (base classes)
    backbone = backbones.get("mmrl", rep_layers=rep_layers, alpha=alpha)
    ours = _ours(backbone, params, arch, dassl.load_prompt(path, backbone, params, arch),
                 ref.images)
    want = torch_backbones.mmrl_logits(ref.model, state, _nchw(ref.images),
                                       _token_ids("a photo of a {}."), rep_layers, alpha)
    _assert_close(ours, want)
  if size == "tiny":  # insertion before the first block too
    state = mmrl_state(arch, 2, seed=1)
    path = save_dassl(tmp_path / "first" / "model.pth.tar-1", state)
    backbone = backbones.get("mmrl", rep_layers=(1, 2), alpha=0.7)
    ours = _ours(backbone, params, arch, dassl.load_prompt(path, backbone, params, arch),
                 ref.images)
    want = torch_backbones.mmrl_logits(ref.model, state, _nchw(ref.images),
                                       _token_ids("a photo of a {}."), (1, 2), 0.7)
    _assert_close(ours, want)


def test_coop_checkpoint_gives_its_context(hf_reference, tmp_path):
  ref = hf_reference("tiny")
  params, arch = checkpoint.load_clip(ref.directory)
  ctx = torch.randn(4, arch.text.width)
  path = save_dassl(tmp_path / "prompt_learner" / "model.pth.tar-50",
                    {"prompt_learner.ctx": ctx, "prompt_learner.token_prefix": torch.zeros(1)})
  prompt = dassl.load_prompt(path, backbones.get("coop"), params, arch)
  np.testing.assert_array_equal(prompt["ctx"], ctx.numpy())
  # the benchmark's route: CoOp's own file layout (keys ctx, token_prefix, token_suffix) named
  # by prompt.init, Dassl's numbered suffix included (configs/paper.py's CoOp file)
  path = save_dassl(tmp_path / "coop" / "model.pth.tar-50",
                    {"ctx": ctx, "token_prefix": torch.zeros(1), "token_suffix": torch.zeros(1)})
  np.testing.assert_array_equal(prompts.init_context(params, arch, n_ctx=4, init=path),
                                ctx.numpy())
  assert not prompts.is_context_file("a photo of a")


def test_wrong_checkpoints_are_one_clear_line(hf_reference, tmp_path):
  ref = hf_reference("tiny")
  params, arch = checkpoint.load_clip(ref.directory)
  path = save_dassl(tmp_path / "maple.pth.tar-2", maple_state(arch, depth=2))
  with pytest.raises(UserError, match="prompt depth 2; the backbone asks for 3"):
    dassl.load_prompt(path, backbones.get("maple", depth=3), params, arch)
  with pytest.raises(UserError, match="is it a mmrl checkpoint"):
    dassl.load_prompt(path, backbones.get("mmrl", rep_layers=(2,)), params, arch)
  wide = maple_state(arch, depth=2)
  wide["prompt_learner.ctx"] = torch.zeros(2, arch.text.width + 1)
  path = save_dassl(tmp_path / "wide.pth.tar-2", wide)
  with pytest.raises(UserError, match=r"\['ctx'\] has shape \(2, 65\)"):
    dassl.load_prompt(path, backbones.get("maple", depth=2), params, arch)
  with pytest.raises(UserError, match="does not exist"):
    dassl.load_prompt(str(tmp_path / "none.pth.tar"), backbones.get("coop"), params, arch)
  # one of our .npz prompts with a tensor missing is named whole, not found later as a KeyError
  from metatpt_jax.backbones import train
  maple2 = backbones.get("maple", depth=2)
  partial = dassl.load_prompt(save_dassl(tmp_path / "ok.pth.tar-2", maple_state(arch, depth=2)),
                              maple2, params, arch)
  del partial["deep_text"]
  train.save_prompt(str(tmp_path / "partial.npz"), partial)
  with pytest.raises(UserError, match="a maple prompt is .*'deep_text'"):
    dassl.load_prompt(str(tmp_path / "partial.npz"), maple2, params, arch)
  with pytest.raises(UserError, match="no field depht"):
    backbones.get("maple", depht=3)


def test_a_depth_one_maple_file_loads(hf_reference, tmp_path):
  """Depth 1 (no layer-wise prompts) is allowed by MaPLe and by our spec: its file loads to
  empty layer stacks of the shapes the backbone's own depth-1 init has."""
  ref = hf_reference("tiny")
  params, arch = checkpoint.load_clip(ref.directory)
  maple1 = backbones.get("maple", depth=1)
  prompt = dassl.load_prompt(save_dassl(tmp_path / "m.pth.tar-2", maple_state(arch, depth=1)),
                             maple1, params, arch)
  assert prompt["deep_text"].shape == (0, 2, arch.text.width)
  assert prompt["deep_proj"]["kernel"].shape == (0, arch.text.width, arch.vision.width)


def test_paper_configs_run_each_backbone_as_its_authors_do():
  from tests.config_files import config_module
  paper = config_module("paper")
  c = paper.get_config("imagenet_a,tpt,maple")
  assert (c.prompt.backbone, c.prompt.maple.depth, c.prompt.maple.n_ctx) == ("maple", 3, 2)
  assert c.prompt.maple.ctx_init == "a photo"  # TPT on MaPLe's test prompt "X X {class}."
  assert c.prompt.backbone_checkpoint.endswith("MultiModalPromptLearner/model.pth.tar-2")
  assert c.output_dir.endswith("imagenet_a/tpt_maple")
  c = paper.get_config("dtd,main,mmrl,fp16")
  assert (c.prompt.mmrl.template, c.prompt.mmrl.alpha) == ("{} texture.", 1.0)
  assert c.model.compute_dtype == "float16"
  assert paper.get_config("imagenet,main,mmrl").prompt.mmrl.alpha == 0.7  # fused on ImageNet
  c = paper.get_config("imagenet_r,tpt,coop")
  assert c.prompt.init.endswith("prompt_learner/model.pth.tar-50") and not c.prompt.backbone
  assert prompts.is_context_file(c.prompt.init)  # read as a file, not tokenised as words
  with pytest.raises(ValueError, match="Backbones: clip, coop, maple, mmrl"):
    paper.get_config("dtd,tpt,maple,mmrl")
  # TDA reads the backbone's class features, not CLIP's template ensemble
  assert paper.get_config("dtd,tda,maple").methods.tda.templates == ()
  assert paper.get_config("dtd,tda").methods.tda.templates

"""Few-shot training of the prompt backbones (`metatpt-train-prompt`): each backbone trains on a
tiny CLIP and image folder, a run cut after an epoch resumes to the uninterrupted run's prompt,
and the written prompt loads where the benchmark reads it."""
import jax
import numpy as np
import pytest
from PIL import Image

from metatpt_jax import backbones
from metatpt_jax.backbones import dassl, train
from metatpt_jax.bench import methods
from metatpt_jax.clip import checkpoint, config, model
from metatpt_jax.errors import UserError
from metatpt_jax.pretrain import state_io
from tests.config_files import config_module


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  base = tmp_path_factory.mktemp("prompt_train")
  arch = config.get_arch("tiny")
  checkpoint.save_hf(model.init_params(jax.random.key(0), arch), arch, str(base / "ckpt"))
  rng = np.random.default_rng(0)
  for c, name in enumerate(("cat", "dog", "sea lion")):
    (base / "images" / name).mkdir(parents=True)
    for i in range(4):  # each class its own colour, so there is something to learn
      pixels = np.clip(rng.normal(60 + 60 * c, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
      Image.fromarray(pixels).save(base / "images" / name / f"{i}.png")
  return base


def _cfg(setup, name, workdir, **train_fields):
  cfg = config_module("prompt_train").get_config(name)
  cfg.model.checkpoint = str(setup / "ckpt")
  cfg.data.source = f"folder:{setup / 'images'}"
  if name == "maple":
    cfg.prompt.maple.update(depth=2, ctx_init="a photo of a")
  if name == "mmrl":
    cfg.prompt.mmrl.update(rep_layers=(2,), rep_dim=16, template="a photo of a {}.")
  if name == "coop":
    cfg.prompt.update(n_ctx=4, init="a photo of a")
  cfg.train.update(dict(epochs=3, batch_size=4, warmup_epochs=1), **train_fields)
  cfg.workdir = str(workdir)
  return cfg


@pytest.mark.parametrize("name", ["coop", "maple", "mmrl"])
def test_each_backbone_trains_and_a_cut_run_resumes_to_the_same_prompt(setup, tmp_path, name,
                                                                       monkeypatch):
  whole = train.run_config(_cfg(setup, name, tmp_path / "whole", lr=0.05))
  real_save = state_io.save_state

  def cut_after_epoch_2(directory, state, info):
    real_save(directory, state, info)
    if info["epochs_done"] == 2:
      raise KeyboardInterrupt("cut")

  monkeypatch.setattr(state_io, "save_state", cut_after_epoch_2)
  with pytest.raises(KeyboardInterrupt):
    train.run_config(_cfg(setup, name, tmp_path / "cut", lr=0.05))
  monkeypatch.setattr(state_io, "save_state", real_save)
  resumed = train.run_config(_cfg(setup, name, tmp_path / "cut", lr=0.05))
  a, b = train.load_prompt_npz(whole), train.load_prompt_npz(resumed)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  # the trained prompt moved from its init and loads where the benchmark reads it
  cfg = _cfg(setup, name, tmp_path)
  params, arch = checkpoint.load_clip(cfg.model.checkpoint)
  backbone = methods.backbone_spec(cfg.prompt) or backbones.CoOp(
      n_ctx=4, ctx_init="a photo of a")
  init = backbone.init(backbone.clip_params(params), arch, jax.random.key(0))
  moved = jax.tree.map(lambda x, y: float(np.abs(np.asarray(x) - np.asarray(y)).max()), a, init)
  assert min(jax.tree.leaves(moved)) > 0, moved
  loaded = dassl.load_prompt(whole, backbone, params, arch)
  jax.tree.map(np.testing.assert_array_equal, loaded, a)
  if name == "coop":  # the benchmark reads CoOp's context through prompt.init
    from metatpt_jax import prompts
    np.testing.assert_array_equal(prompts.init_context(params, arch, n_ctx=4, init=whole), a["ctx"])


@pytest.mark.parametrize("field,value", [("adapt", ("ctx",)), ("backbone_checkpoint", "x.npz")])
def test_the_benchmarks_prompt_fields_are_refused_by_training(setup, tmp_path, field, value):
  cfg = _cfg(setup, "maple", tmp_path)
  cfg.prompt[field] = value
  with pytest.raises(UserError, match=f"prompt.{field} is the benchmark's"):
    train.run_config(cfg)
  assert not (tmp_path / "config.json").exists()  # refused before anything is written


def test_training_lowers_the_loss_and_the_schedule_is_dassls(setup, tmp_path):
  logs = []
  cfg = _cfg(setup, "maple", tmp_path, lr=0.05, epochs=6, warmup_epochs=0)
  params, arch = checkpoint.load_clip(cfg.model.checkpoint)
  domain = train.training_data(cfg, arch.vision.image_size)
  spec = train.TrainSpec(**{k: tuple(v) if isinstance(v, list) else v
                            for k, v in cfg.train.to_dict().items()})
  train.train(methods.backbone_spec(cfg.prompt), params, arch, domain.images, domain.labels,
              domain.class_names, spec, str(tmp_path), log=logs.append)
  losses = [float(line.rsplit("loss ", 1)[1]) for line in logs]
  assert losses[-1] < 0.8 * losses[0], losses
  maple = train.AUTHORS["maple"]  # warm-up epoch at 1e-5, then the cosine shifted by one
  assert [round(train.epoch_lr(maple, e), 7) for e in range(2)] == [1e-5, 0.0026]
  coop = train.AUTHORS["coop"]
  assert train.epoch_lr(coop, 49) == pytest.approx(0.002 * 0.5 * (1 + np.cos(np.pi * 48 / 50)))


class _DasslConstantWarmup:
  """Dassl's ConstantWarmupScheduler as its code behaves (a transcription for this test): a
  torch LRScheduler at the constant lr for `warmup_epoch` steps that, once past them, steps its
  successor (created first, so already at its epoch 0) instead of itself."""

  def __new__(cls, optimizer, successor, warmup_epoch, cons_lr):
    import torch

    class Warmup(torch.optim.lr_scheduler.LRScheduler):
      def __init__(self):
        self.successor, self.warmup_epoch = successor, warmup_epoch
        super().__init__(optimizer)

      def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
          return self.successor.get_last_lr()
        return [cons_lr for _ in self.base_lrs]

      def step(self, epoch=None):
        if self.last_epoch >= self.warmup_epoch:
          self.successor.step(epoch)
          self._last_lr = self.successor.get_last_lr()
        else:
          super().step(epoch)

    return Warmup()


@pytest.mark.parametrize("name", ["coop", "maple"])
def test_epoch_lr_is_dassls_warmup_and_cosine_in_torch(name):
  """train.epoch_lr against torch's CosineAnnealingLR(T_max=epochs) wrapped in Dassl's
  constant warm-up (stepped once per epoch after the epoch, as Dassl's trainer does)."""
  import torch
  spec = train.AUTHORS[name]
  opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=spec.lr, momentum=0.9)
  cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=spec.epochs)
  sched = _DasslConstantWarmup(opt, cosine, spec.warmup_epochs, spec.warmup_lr)
  torch_lrs = []
  for _ in range(spec.epochs):
    torch_lrs.append(opt.param_groups[0]["lr"])
    opt.step()
    sched.step()
  ours = [train.epoch_lr(spec, e) for e in range(spec.epochs)]
  np.testing.assert_allclose(ours, torch_lrs, rtol=1e-9, atol=1e-12)
  assert torch_lrs[0] == spec.warmup_lr and torch_lrs[1] == pytest.approx(spec.lr)

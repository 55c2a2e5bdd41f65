"""Few-shot training of the prompt backbones (CoOp, MaPLe, MMRL) in JAX, as their authors do.

CLIP stays frozen; only the prompt tensors train. Each backbone's loss, optimiser and schedule
default to its authors' (Dassl) configs (`AUTHORS`, docs/BACKBONES.md):
- loss: cross-entropy on exp(logit_scale) * cos logits (CoOp, MaPLe); MMRL's
  0.7 CE(class token) + 0.3 CE(representation) + reg * ((1 - cos(image, CLIP's image)) +
  (1 - cos(text, CLIP's text))), CLIP's features from the same frozen weights without prompts;
- optimiser: SGD (momentum 0.9, weight decay 5e-4 on every tensor) for CoOp and MaPLe, AdamW
  (weight decay 5e-4) for MMRL;
- schedule: Dassl's, stepped once per epoch: `warmup_epochs` at `warmup_lr`, then a cosine from
  `lr` over `epochs`, shifted by the warm-up (so it never reaches 0);
- data: random resized crops (scale `crop_scale`) with horizontal flips of the few-shot images,
  reshuffled every epoch, the last short batch dropped.
The run is resumable: the prompt, optimiser state and epoch are saved after every epoch
(`pretrain.state_io`), and the trained prompt goes to `<workdir>/prompt.npz`
(`save_prompt`; `backbones.dassl.load_prompt` reads it, as the benchmark's
`--config.prompt.backbone_checkpoint`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metatpt_jax import prompts, views
from metatpt_jax.clip import model as clip_model
from metatpt_jax.clip import shared_prefix
from metatpt_jax.errors import UserError
from metatpt_jax.image_ops import clip_normalize
from metatpt_jax.pretrain import state_io


@dataclasses.dataclass(frozen=True)
class TrainSpec:
  epochs: int = 50
  batch_size: int = 32
  optimizer: str = "sgd"        # "sgd" | "adamw"
  lr: float = 0.002
  momentum: float = 0.9
  weight_decay: float = 5e-4
  warmup_epochs: int = 1
  warmup_lr: float = 1e-5
  crop_scale: tuple[float, float] = (0.08, 1.0)
  mmrl_alpha: float = 0.7       # MMRL: the class-token branch's weight in the loss
  mmrl_reg: float = 1.0         # MMRL: the weight of the distance to CLIP's own features

  def check(self) -> None:
    if self.optimizer not in ("sgd", "adamw"):
      raise UserError(f"optimizer {self.optimizer!r}: choose 'sgd' or 'adamw'.")
    if self.epochs < 1 or self.batch_size < 1:
      raise UserError(f"epochs {self.epochs} and batch_size {self.batch_size} must be >= 1.")


# The authors' configs for training on one source (ImageNet, 16 shots) and testing elsewhere:
# CoOp vit_b16_ep50 (its ImageNet setting), MaPLe's cross-dataset yaml, MMRL's cross-dataset yaml.
AUTHORS = {
    "coop": TrainSpec(epochs=50, batch_size=32, optimizer="sgd", lr=0.002),
    "maple": TrainSpec(epochs=2, batch_size=4, optimizer="sgd", lr=0.0026),
    "mmrl": TrainSpec(epochs=1, batch_size=32, optimizer="adamw", lr=1e-3, warmup_epochs=0,
                      crop_scale=(0.5, 1.0), mmrl_reg=0.2),
}


def epoch_lr(spec: TrainSpec, epoch: int) -> float:
  """Dassl's ConstantWarmupScheduler over CosineAnnealingLR(T_max=epochs), per epoch."""
  if epoch < spec.warmup_epochs:
    return spec.warmup_lr
  return spec.lr * 0.5 * (1 + math.cos(math.pi * (epoch - spec.warmup_epochs) / spec.epochs))


def make_optimizer(spec: TrainSpec) -> optax.GradientTransformation:
  """torch.optim's SGD (decay added to the gradient, then momentum) or AdamW, with the
  learning rate an injected hyper-parameter (set per epoch)."""
  if spec.optimizer == "sgd":
    def sgd(learning_rate):
      return optax.chain(optax.add_decayed_weights(spec.weight_decay),
                         optax.sgd(learning_rate, momentum=spec.momentum))
    return optax.inject_hyperparams(sgd)(learning_rate=spec.lr)
  return optax.inject_hyperparams(optax.adamw)(learning_rate=spec.lr,
                                               weight_decay=spec.weight_decay)


def _augment(images, key, scale):
  """Random resized crops with flips of [B, S, S, 3] images in [0, 1]."""
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(lambda im, k: views.tpt_crop(views.square_source(im), k, im.shape[0],
                                               scale))(images, keys)


def _cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def loss_fn(prompt, clip_params, backbone, arch, bank, batch, spec: TrainSpec, clip_text=None):
  """The backbone's training loss on a batch {"image": [B, S, S, 3] in [0, 1], "label"}."""
  images = clip_normalize(batch["image"])
  text = backbone.text_features(clip_params, arch, bank, prompt)
  if backbone.name != "mmrl":
    feats = backbone.image_features(clip_params, arch, prompt, images)
    return _cross_entropy(backbone.logits(clip_params, feats, text), batch["label"])
  cls, rep = backbone.image_branches(clip_params, arch, prompt, images)
  clip_image = jax.lax.stop_gradient(
      clip_model.normalize(clip_model.encode_image(clip_params, images, arch)))
  a = spec.mmrl_alpha
  ce = (a * _cross_entropy(backbone.logits(clip_params, cls, text), batch["label"])
        + (1 - a) * _cross_entropy(backbone.logits(clip_params, rep, text), batch["label"]))
  distance = ((1 - jnp.sum(cls * clip_image, -1).mean())
              + (1 - jnp.sum(text * clip_text, -1).mean()))
  return ce + spec.mmrl_reg * distance


def save_prompt(path: str, prompt: dict) -> None:
  """A prompt pytree as a flat .npz ("proj/kernel", ...), written whole or not at all."""
  flat = {"/".join(str(getattr(k, "key", k)) for k in p): np.asarray(x)
          for p, x in jax.tree_util.tree_leaves_with_path(prompt)}
  tmp = path + ".tmp.npz"
  np.savez(tmp, **flat)
  os.replace(tmp, path)


def load_prompt_npz(path: str) -> dict:
  with np.load(path) as data:
    prompt = {}
    for name in data.files:
      node = prompt
      *parents, leaf = name.split("/")
      for p in parents:
        node = node.setdefault(p, {})
      node[leaf] = data[name].astype(np.float32)
  return prompt


def train(backbone, clip_params, arch, images: np.ndarray, labels: np.ndarray, class_names,
          spec: TrainSpec, workdir: str, seed: int = 0, log=print) -> dict:
  """Trains `backbone`'s prompt on labelled images ([N, S, S, 3] uint8 or float in [0, 1]);
  resumes from `workdir` where an earlier run of the same setting stopped. Returns the prompt."""
  spec.check()
  if len(labels) < spec.batch_size:
    raise UserError(f"{len(labels)} training images are fewer than one batch of "
                    f"{spec.batch_size}.")
  clip_params = backbone.clip_params(clip_params)
  bank = backbone.bank(clip_params, arch, class_names)
  clip_text = None
  if backbone.name == "mmrl":  # CLIP's own text features of the same template
    plain = prompts.build_prompt_bank(clip_params, arch, class_names, 0, template=backbone.template)
    clip_text = clip_model.normalize(shared_prefix.encode_text_shared_prefix(
        clip_params, plain.prefix[0], plain.suffix, plain.eot_indices, arch))
  optimizer = make_optimizer(spec)
  prompt = backbone.init(clip_params, arch, jax.random.key(seed))
  state = {"prompt": prompt, "opt": optimizer.init(prompt)}
  start = 0
  if state_io.has_state(workdir):
    state, info = state_io.restore_state(workdir, state)
    start = int(info["epochs_done"])
    log(f"resuming after epoch {start} from {workdir}")

  @jax.jit
  def step(state, batch, key, lr):
    batch = dict(batch, image=_augment(batch["image"], key, spec.crop_scale))
    loss, grads = jax.value_and_grad(loss_fn)(state["prompt"], clip_params, backbone, arch,
                                              bank, batch, spec, clip_text)
    opt = state["opt"]._replace(hyperparams={**state["opt"].hyperparams, "learning_rate": lr})
    updates, opt = optimizer.update(grads, opt, state["prompt"])
    return {"prompt": optax.apply_updates(state["prompt"], updates), "opt": opt}, loss

  images = np.asarray(images)
  scale = 255.0 if images.dtype == np.uint8 else 1.0
  per_epoch = len(labels) // spec.batch_size
  for epoch in range(start, spec.epochs):
    order = np.random.default_rng([seed, epoch]).permutation(len(labels))
    lr, losses = jnp.float32(epoch_lr(spec, epoch)), []
    for b in range(per_epoch):
      idx = order[b * spec.batch_size:(b + 1) * spec.batch_size]
      batch = {"image": jnp.asarray(images[idx], jnp.float32) / scale,
               "label": jnp.asarray(labels[idx], jnp.int32)}
      key = jax.random.fold_in(jax.random.key(seed), epoch * per_epoch + b)
      state, loss = step(state, batch, key, lr)
      losses.append(float(loss))
    state_io.save_state(workdir, state, dict(epochs_done=epoch + 1, loss=float(np.mean(losses))))
    log(f"epoch {epoch + 1}/{spec.epochs}: lr {float(lr):.2e}, loss {np.mean(losses):.4f}")
  save_prompt(os.path.join(workdir, "prompt.npz"), state["prompt"])
  return state["prompt"]


def training_data(cfg, image_size: int):
  """The few-shot set: the artwork world's source styles ("artwork_sources") or an image
  folder of one sub-folder per class ("folder:<path>")."""
  from metatpt_jax.data import domains
  if cfg.data.source == "artwork_sources":
    from metatpt_jax.data.artwork import world
    return world.source_domain(cfg.data.split, image_size=image_size,
                               cache_dir=cfg.data.cache_dir or None,
                               num_classes=cfg.data.num_classes or None, shots=cfg.data.shots,
                               seed=cfg.seed)
  if cfg.data.source.startswith("folder:"):
    return domains.load_domain(f"{cfg.data.source}:clean", image_size=image_size,
                               seed=cfg.seed)
  raise UserError(f"data.source {cfg.data.source!r}: give 'artwork_sources' or "
                  "'folder:<directory of class folders>'.")


def run_config(cfg) -> str:
  """`metatpt-train-prompt`'s run: a config (configs/prompt_train.py) -> the prompt file."""
  from metatpt_jax.bench import methods
  from metatpt_jax.clip import checkpoint
  for field in ("adapt", "backbone_checkpoint"):  # the benchmark's fields, not training's
    if cfg.prompt.get(field):
      raise UserError(f"--config.prompt.{field} is the benchmark's (what test-time tuning "
                      "adapts / which trained prompt it loads); training starts from the "
                      "backbone's own init and trains every tensor: leave it unset here.")
  params, arch = checkpoint.load_clip(cfg.model.checkpoint)
  backbone = methods.backbone_spec(cfg.prompt)
  if backbone is None:  # CoOp: the context alone, from prompt.n_ctx / prompt.init
    from metatpt_jax.backbones import CoOp
    backbone = CoOp(n_ctx=cfg.prompt.n_ctx, ctx_init=cfg.prompt.init or None)
  backbone.check(arch)
  domain = training_data(cfg, arch.vision.image_size)
  spec = TrainSpec(**{k: tuple(v) if isinstance(v, list) else v
                      for k, v in cfg.train.to_dict().items()})
  os.makedirs(cfg.workdir, exist_ok=True)
  with open(os.path.join(cfg.workdir, "config.json"), "w") as f:
    json.dump(dict(config=json.loads(cfg.to_json_best_effort()),
                   backbone=dataclasses.asdict(backbone), images=len(domain.labels),
                   classes=len(domain.class_names)), f, indent=1, default=str)
  train(backbone, params, arch, domain.images, domain.labels, domain.class_names, spec,
        cfg.workdir, seed=cfg.seed)
  return os.path.join(cfg.workdir, "prompt.npz")

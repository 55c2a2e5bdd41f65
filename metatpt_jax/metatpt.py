"""MetaTPT (arXiv 2512.12268) as reconstructed here (docs/METHOD.md).

Per test image x, meta-parameters (p, phi) = (prompt context, augmentation generator):

  inner:  phi' = phi - alpha * grad_phi L_aux(phi; x, p)            (`metatpt_inner`)
  outer:  L_out(p, phi) = confident-view marginal entropy + w * KL(kept views || their mean),
          on the views G_{phi'(phi, p)} makes of x; (p, phi) <- AdamW(grad_{p, phi} L_out).

`jax.grad` of the outer loss flows through the inner update (second order, MAML-style).
order="first" stops it at phi' (FOMAML: d phi'/d phi = I, d phi'/d p = 0). The prompt's
meta-gradient has a second-order term only when L_aux reads p (`InnerObjective.reads_prompt`:
"view_kl" does, "embedding_agreement" does not).

Variants (`MetaTPTSpec` fields): photometric generator factors (`generator.photometric`), inner
objectives not anchored on view 0 (aux_loss="confident_consensus" | "feature_consensus"), a
generator that persists along the stream (generator_memory="stream", online).

Ablations (all `MetaTPTSpec` fields): augment="fixed" (TPT's views, the spec's `view_kind`, no
generator), schedule="joint" (one joint step on L_aux + L_out, no inner step), order="first",
and the offline augmenter (`offline_generator.fit_offline_generator` learns phi across a stream,
then augment="frozen" uses it without inner steps).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from metatpt_jax import generator as gen
from metatpt_jax import losses, offline_generator, registry, tpt, views
from metatpt_jax.errors import UserError
from metatpt_jax.frozen_clip import (
    FrozenCLIP,
    ModelSpec,
    class_features,
    encode_images,
    image_uses_prompt,
    logits,
)
from metatpt_jax.metatpt_inner import NO_SWEEP, inner_update, make_episode, view_features
from metatpt_jax.specs import ConfidentViewsSpec


@dataclasses.dataclass(frozen=True)
class MetaTPTSpec(ConfidentViewsSpec):
  """Static MetaTPT hyper-parameters (64 views, 10 % kept, as TPT: `ConfidentViewsSpec`, whose
  `view_kind`/`crop_scale` make the fixed views of augment="fixed")."""
  # learned: the generator's views, adapted by the inner step (the method); fixed: TPT's views;
  # frozen: an offline-learned generator's views, no inner step (see OBJECTIVES).
  augment: Literal["learned", "fixed", "frozen"] = "learned"
  # dual_loop: inner step on L_aux, then L_out; joint: one step on L_aux + L_out (SCHEDULES).
  schedule: Literal["dual_loop", "joint"] = "dual_loop"
  order: Literal["second", "first"] = "second"   # through the inner step or not (ORDERS)
  inner_steps: int = 1
  inner_lr: float = 0.1
  aux_loss: losses.InnerObjectiveName = "view_kl"   # a name in losses.INNER_OBJECTIVES
  aux_penalty: float = 1.0           # weight of the generator's deviation penalty in L_aux
  consistency_weight: float = 1.0
  outer_steps: int = 1
  # every_step: the confident views are chosen anew at every outer step (the reconstruction);
  # first_step: chosen at the first outer step and kept (by view index), as TPT does.
  selection: Literal["every_step", "first_step"] = "every_step"
  # sgd: phi' = phi - inner_lr * g; normalized: phi' = phi - inner_lr * g / ||g|| (a step of
  # length inner_lr in parameter space, whatever the size of L_aux's gradient).
  inner_step: Literal["sgd", "normalized"] = "sgd"
  prompt_lr: float = 5e-3            # TPT's
  generator_lr: float = 1e-3
  weight_decay: float = 0.01
  generator: gen.GeneratorSpec = gen.GeneratorSpec()
  # Outer loss: encode all generated views without gradient to choose the confident ones, then
  # re-encode only those `num_keep` views with gradient. The gradient is the same as through
  # all views (selection is stop-gradient and the loss reads only the kept views) at about a
  # tenth of the outer backward's cost. False differentiates through every view's encoding.
  recompute_kept: bool = True
  # Inner gradient over `view_chunk` generated views at a time, each chunk rematerialised
  # (jax.checkpoint inside lax.scan), so second order keeps one chunk's intermediates instead
  # of all views': memory grows with the chunk, not with n_views. Exact (the same gradient);
  # costs a recomputation of the inner pass in the outer backward. 0: all views at once.
  # Needs an inner objective that is a mean of per-view terms.
  view_chunk: int = 0
  # episodic: every sample starts from the same generator phi (the reconstruction); stream: the
  # generator a sample ends with is the next sample's start (online, as the paper's "online
  # beats offline" ablation suggests; the prompt still resets). A stream runs in order on one
  # device, as TDA does (`metatpt_stream`).
  generator_memory: Literal["episodic", "stream"] = "episodic"

  # Added after records were made (the fixed views were TPT's crops before; the generator
  # carried along a stream is new): at their defaults they leave fingerprints as they were.
  later_fields = ("view_kind", "crop_scale", "generator_memory")
  code_fields = ("recompute_kept",)

  def switches(self) -> tuple:
    # view_chunk splits only the inner step's gradient: the learned views' dual loop.
    chunked = self.view_chunk > 0 and self.augment == "learned" and self.schedule == "dual_loop"
    return (chunked, self.generator.factor_shift, self.generator.use_feature,
            self.generator.photometric)

  def takes_dataset_views(self) -> bool:
    return self.augment == "fixed"  # the fixed-views ablation tunes on TPT's views

  def inner_objective(self) -> losses.InnerObjective:
    """L_aux: the objective named by aux_loss, its generator penalty weighted by aux_penalty."""
    return dataclasses.replace(losses.INNER_OBJECTIVES[self.aux_loss],
                               penalty_weight=self.aux_penalty)

  def check(self) -> None:
    if isinstance(self.generator, dict):  # from a config
      object.__setattr__(self, "generator", gen.GeneratorSpec(**self.generator))
    super().check()
    if self.view_chunk < 0:
      raise UserError(f"MetaTPTSpec.view_chunk={self.view_chunk}; use 0 (all views at once) or "
                      "a positive number of views per chunk.")
    if self.view_chunk and not self.inner_objective().is_per_view:
      per_view = sorted(k for k, o in losses.INNER_OBJECTIVES.items() if o.is_per_view)
      raise UserError(f"MetaTPTSpec.view_chunk={self.view_chunk} needs an inner objective that "
                      f"is a mean of per-view terms ({per_view}); aux_loss={self.aux_loss!r} "
                      "is not: set view_chunk=0.")
    if self.generator_memory == "stream" and self.augment != "learned":
      raise UserError(f"MetaTPTSpec.generator_memory='stream' carries the learned generator "
                      f"along the stream; augment={self.augment!r} has none: use "
                      "augment='learned' or generator_memory='episodic'.")
    if self.outer_steps < 1 or self.inner_steps < 0:
      raise UserError("MetaTPT needs outer_steps >= 1 and inner_steps >= 0; got outer_steps="
                      f"{self.outer_steps}, inner_steps={self.inner_steps}.")


def outer_loss_on_features(frozen, feats, ctx, spec, mspec, keep=None):
  """(L_out, kept view indices) on fixed view features [V, E]; `keep` None selects the
  confident views."""
  view_logits = logits(frozen, feats, class_features(frozen, ctx, mspec))
  if keep is None:
    keep = losses.select_confident(view_logits, spec.num_keep)
  return losses.marginal_entropy_and_consistency(view_logits[keep],
                                                 spec.consistency_weight), keep


def outer_loss_on_generated(frozen, phi, ctx, ep, spec, mspec, keep=None):
  """(L_out on G_phi's views, kept view indices), gradient to phi and ctx; `keep` None selects
  the confident views."""
  if not spec.recompute_kept:
    feats, _ = view_features(frozen, phi, ep, spec, mspec, ctx)
    return outer_loss_on_features(frozen, feats, ctx, spec, mspec, keep)
  all_views, _ = gen.learned_views(phi, spec.generator, ep.image, ep.noise, ep.feature0,
                                   ep.source)
  text = class_features(frozen, ctx, mspec)
  if keep is None:
    # Selection pass: no gradient, so XLA keeps no activations of the 63-view encoding.
    feats = jax.lax.stop_gradient(encode_images(frozen, all_views[1:], mspec, ctx=ctx))
    feats = jnp.concatenate([ep.feature0[None], feats], axis=0)
    keep = losses.select_confident(logits(frozen, feats, jax.lax.stop_gradient(text)),
                                   spec.num_keep)
  # Gradient pass over the kept views only (view 0, if kept, is the image: its gradient is 0).
  kept = encode_images(frozen, all_views[keep], mspec, remat=mspec.remat, ctx=ctx)
  return losses.marginal_entropy_and_consistency(logits(frozen, kept, text),
                                                 spec.consistency_weight), keep


def dual_loop_loss_and_keep(frozen, meta, ep, spec, mspec, keep=None, sweep=NO_SWEEP):
  """schedule="dual_loop" (the method): L_out on the views of phi' = inner_update(phi, p)."""
  adapted = inner_update(frozen, meta["phi"], meta["ctx"], ep, spec, mspec, sweep)
  return outer_loss_on_generated(frozen, adapted, meta["ctx"], ep, spec, mspec, keep)


def joint_loss_and_keep(frozen, meta, ep, spec, mspec, keep=None, sweep=NO_SWEEP):
  """schedule="joint" (ablation): L_aux + L_out on the same views of phi, no inner step."""
  if sweep.lr is not None or sweep.steps is not None:
    raise ValueError("schedule='joint' takes no inner step: a sweep of the inner learning rate "
                     "or step count needs schedule='dual_loop'.")
  objective = spec.inner_objective() if sweep.objective is None else sweep.objective
  feats, penalty = view_features(frozen, meta["phi"], ep, spec, mspec, meta["ctx"])
  view_logits = logits(frozen, feats, class_features(frozen, meta["ctx"], mspec))
  if keep is None:
    keep = losses.select_confident(view_logits, spec.num_keep)
  outer = losses.marginal_entropy_and_consistency(view_logits[keep], spec.consistency_weight)
  return objective.loss(view_logits, feats, penalty) + outer, keep


SCHEDULES = {"dual_loop": dual_loop_loss_and_keep, "joint": joint_loss_and_keep}


def outer_loss_and_keep(frozen, meta, ep, spec, mspec, keep=None, sweep=NO_SWEEP):
  """(L_out(p, phi), kept view indices) for meta = {"ctx": p, "phi": phi} under spec.schedule;
  `keep` None selects the confident views; `sweep` overrides inner-loop settings."""
  return SCHEDULES[spec.schedule](frozen, meta, ep, spec, mspec, keep, sweep)


def outer_loss(frozen, meta, ep, spec, mspec, keep=None, sweep=NO_SWEEP):
  """L_out(p, phi) for meta = {"ctx": p, "phi": phi} (`outer_loss_and_keep`)."""
  return outer_loss_and_keep(frozen, meta, ep, spec, mspec, keep, sweep)[0]


def make_meta_optimizer(spec: MetaTPTSpec, tuned=("ctx", "phi")):
  """AdamW on the prompt (prompt_lr) and the generator (generator_lr), for meta dicts with the
  keys `tuned`."""
  adamw = lambda lr: optax.adamw(lr, weight_decay=spec.weight_decay)
  rates = {"ctx": spec.prompt_lr, "phi": spec.generator_lr}
  return optax.multi_transform({k: adamw(rates[k]) for k in tuned}, {k: k for k in tuned})


def learned_views_objective(frozen, phi, ep, key, spec, mspec):
  """augment="learned" (the method): the outer loss of spec.schedule on the generator's views."""
  del phi, key  # meta["phi"] is the generator the loss differentiates
  return lambda meta, keep: outer_loss_and_keep(frozen, meta, ep, spec, mspec, keep)


def fixed_views_objective(frozen, phi, ep, key, spec, mspec):
  """augment="fixed" (ablation): L_out on TPT's views (spec.view_kind, as TPT makes them from
  the same key); features once, no generator."""
  del phi
  all_views = spec.make_views(ep.image, key, ep.source)
  return _on_fixed_views(frozen, all_views, spec, mspec)


def _on_fixed_views(frozen, all_views, spec, mspec):
  """loss_fn(meta, keep) on views that do not change while tuning: their features once, or,
  where the backbone's image features read the prompt, under the prompt being tuned."""
  if image_uses_prompt(mspec):
    return lambda meta, keep: outer_loss_on_features(
        frozen, encode_images(frozen, all_views, mspec, remat=mspec.remat, ctx=meta["ctx"]),
        meta["ctx"], spec, mspec, keep)
  feats = jax.lax.stop_gradient(encode_images(frozen, all_views, mspec))
  return lambda meta, keep: outer_loss_on_features(frozen, feats, meta["ctx"], spec, mspec, keep)


def frozen_generator_objective(frozen, phi, ep, key, spec, mspec):
  """augment="frozen" (ablation): L_out on the views of a fixed phi (e.g. learned offline by
  `offline_generator.fit_offline_generator`); no inner step, only the prompt is tuned."""
  del key
  if image_uses_prompt(mspec):
    all_views, _ = jax.lax.stop_gradient(gen.learned_views(
        phi, spec.generator, ep.image, ep.noise, ep.feature0, ep.source))
    return _on_fixed_views(frozen, all_views, spec, mspec)
  feats, _ = jax.lax.stop_gradient(view_features(frozen, phi, ep, spec, mspec))
  return lambda meta, keep: outer_loss_on_features(frozen, feats, meta["ctx"], spec, mspec, keep)


# augment -> fn(frozen, phi, episode, key, spec, mspec) -> loss_fn(meta, keep) -> (loss, keep).
OBJECTIVES = {"learned": learned_views_objective, "fixed": fixed_views_objective,
              "frozen": frozen_generator_objective}


def metatpt_adapt_one_sample(frozen: FrozenCLIP, phi, image: jax.Array, key: jax.Array,
                             spec: MetaTPTSpec, mspec: ModelSpec,
                             source: views.Source | None = None, generator_opt=None):
  """Adapts (p, phi) to one image and predicts it with the adapted prompt on view 0.

  Args:
    frozen: CLIP parameters, prompt bank and initial context (reset every sample).
    phi: generator parameters to start from (initial, or the offline-learned ones).
    image: [S, S, 3] float in [0, 1], already resized and centre-cropped.
    key: this sample's PRNG key.
    source: the decoded image on a padded canvas the views are cut from (default: `image`).
    generator_opt: the generator's AdamW state to start from (a stream carries it); None: a
      fresh one.
  Returns:
    (logits [C], metrics) -- metrics hold the first outer loss, the adapted phi and, for the
    learned views, the generator's AdamW state after the sample ("generator_opt").
  """
  chex.assert_rank(image, 3)
  if phi is None and spec.augment != "fixed":
    raise UserError("MetaTPT needs generator parameters phi: pass "
                    "generator.init_generator(key, spec.generator, arch.embed_dim) (as "
                    "AdaptState(frozen, phi) for adapt.make_step).")
  ep = make_episode(frozen, image, key, spec, mspec, source)
  objective = OBJECTIVES[spec.augment](frozen, phi, ep, key, spec, mspec)

  def loss_fn(meta, keep):  # as `tpt.tune` reads it: (loss, (keep, no extra output))
    loss, keep = objective(meta, keep)
    return loss, (keep, None)

  # Only the learned augmentation tunes phi; the ablations' views are fixed before tuning, so
  # phi stays out of their optimiser (no weight decay on a generator nothing reads).
  meta = {"ctx": frozen.ctx_init, "phi": phi} if spec.augment == "learned" else {
      "ctx": frozen.ctx_init}
  opt = make_meta_optimizer(spec, tuple(meta))
  opt_state = opt.init(meta)
  if generator_opt is not None:  # the prompt's state is fresh; the generator's carried
    opt_state = opt_state._replace(inner_states={**opt_state.inner_states, "phi": generator_opt})
  meta, opt_state, (loss0, _, _) = tpt.tune_from(loss_fn, meta, opt_state, spec.outer_steps, opt,
                                                 select_once=spec.selection == "first_step")
  feature0 = (encode_images(frozen, image[None], mspec, ctx=meta["ctx"])
              if image_uses_prompt(mspec) else ep.feature0[None])
  final = logits(frozen, feature0, class_features(frozen, meta["ctx"], mspec))[0]
  metrics = dict(loss=loss0, phi=meta.get("phi", phi))
  if "phi" in meta:
    metrics["generator_opt"] = opt_state.inner_states["phi"]
  return final, metrics


def views_before_and_after_inner(frozen: FrozenCLIP, phi, image, key, spec: MetaTPTSpec,
                                 mspec: ModelSpec, source: views.Source | None = None):
  """The generated views of one image under phi and under phi' (after the inner loop).

  For inspection and plots: ([K+1, S, S, 3], [K+1, S, S, 3]), view 0 first.
  """
  ep = make_episode(frozen, image, key, spec, mspec, source)
  adapted = inner_update(frozen, phi, frozen.ctx_init, ep, spec, mspec)
  before, _ = gen.learned_views(phi, spec.generator, image, ep.noise, ep.feature0, ep.source)
  after, _ = gen.learned_views(adapted, spec.generator, image, ep.noise, ep.feature0, ep.source)
  return before, after


def _adapt_one(frozen, phi, image, key, spec, mspec, source=None):
  """The benchmark's per-sample function: per-sample generators are not returned (memory)."""
  out, metrics = metatpt_adapt_one_sample(frozen, phi, image, key, spec, mspec, source)
  return out, dict(loss=metrics["loss"])


class StreamState(NamedTuple):
  """What generator_memory="stream" carries from sample to sample: the generator and its
  AdamW state (as the offline generator's fit carries both)."""
  phi: dict
  opt: Any


def metatpt_stream(frozen: FrozenCLIP, state: StreamState, images, keys, spec: MetaTPTSpec,
                   mspec: ModelSpec, sources: views.Source | None = None):
  """generator_memory="stream": images [B, S, S, 3] in order, each adapted as
  `metatpt_adapt_one_sample` does from the generator (and its AdamW state) the previous sample
  ended with; the prompt and its optimiser state reset every sample. Returns (state after the
  batch, logits [B, C], metrics)."""
  chex.assert_rank(images, 4)

  def step(state, xs):
    image, key, source = xs
    out, metrics = metatpt_adapt_one_sample(frozen, state.phi, image, key, spec, mspec, source,
                                            generator_opt=state.opt)
    return StreamState(metrics["phi"], metrics["generator_opt"]), (out, metrics["loss"])

  state, (out, loss) = jax.lax.scan(step, state, (images, keys, sources))
  return state, out, dict(loss=loss)


def _init_generator(key, spec, arch, num_classes):
  """phi (episodic); for a stream, phi and a fresh AdamW state of the generator."""
  del num_classes
  phi = gen.init_generator(key, spec.generator, arch.embed_dim)
  if spec.generator_memory != "stream":
    return phi
  meta = {"ctx": jnp.zeros((1,)), "phi": phi}  # the prompt's part of the state is masked out
  return StreamState(phi, make_meta_optimizer(spec, tuple(meta)).init(meta).inner_states["phi"])


# Module-level jitted functions: one compilation cache for every domain and seed of a run.
_VIEWS_BEFORE_AFTER = jax.jit(views_before_and_after_inner, static_argnums=(4, 5))


def _fit_offline(state, spec, mspec, images, sources: views.Source | None, key):
  """augment="frozen": phi learned across the domain's first unlabeled images, then frozen."""
  phi, _ = offline_generator.FIT_OFFLINE(state.frozen, state.method_state, images, key, spec,
                                         mspec, sources)
  return state._replace(method_state=phi)


registry.register(registry.Method(
    "metatpt", _adapt_one, spec_type=MetaTPTSpec, init_state=_init_generator,
    stream=metatpt_stream, online=lambda spec: spec.generator_memory == "stream",
    variants={"metatpt_first_order": dict(order="first"), "metatpt_joint": dict(schedule="joint"),
              "metatpt_fixed_aug": dict(augment="fixed"),
              "metatpt_offline": dict(augment="frozen")},
    offline_images=lambda spec, mcfg: int(mcfg.offline_images) if spec.augment == "frozen" else 0,
    prepare=_fit_offline,
    config_fields={"offline_images": 64},  # images the offline generator is fitted on
    # A stream's generator changes along the stream: no single before/after picture.
    view_pairs=lambda spec: (_VIEWS_BEFORE_AFTER if spec.augment == "learned"
                             and spec.generator_memory == "episodic" else None)))

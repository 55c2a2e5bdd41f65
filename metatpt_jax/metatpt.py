"""MetaTPT (arXiv 2512.12268) as reconstructed here (docs/METHOD.md).

Per test image x, meta-parameters (p, phi) = (prompt context, augmentation generator):

  inner:  phi' = phi - alpha * grad_phi L_aux(phi; x, p)            (inner_steps times)
  outer:  L_out(p, phi) = confident-view marginal entropy + w * KL(kept views || their mean),
          on the views G_{phi'(phi, p)} makes of x; (p, phi) <- AdamW(grad_{p, phi} L_out).

`jax.grad` of the outer loss flows through the inner update (second order, MAML-style).
order="first" stops it at phi' (FOMAML: d phi'/d phi = I, d phi'/d p = 0). The prompt's
meta-gradient has a second-order term only when L_aux depends on p (default "view_kl"); with a
p-free L_aux ("embedding_agreement") second and first order give the same prompt gradient.

Ablations (all `MetaTPTSpec` fields): augment="fixed" (TPT's random crops, no generator),
schedule="joint" (one joint step on L_aux + L_out, no inner step), order="first", and the
offline augmenter (`offline_generator.fit_offline_generator` learns phi across a stream, then
augment="frozen" uses it without inner steps).
"""
from __future__ import annotations

import dataclasses
from typing import Literal, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from metatpt_jax import generator as gen
from metatpt_jax import losses, views
from metatpt_jax.errors import UserError
from metatpt_jax.frozen_clip import FrozenCLIP, ModelSpec, class_features, encode_images, logits
from metatpt_jax.specs import Spec


@dataclasses.dataclass(frozen=True)
class MetaTPTSpec(Spec):
  """Static MetaTPT hyper-parameters; each variant field names a function in this module."""
  n_views: int = 64                  # view 0 + 63 generated views, as TPT
  selection_ratio: float = 0.1
  # learned: the generator's views, adapted by the inner step (the method); fixed: TPT's random
  # crops; frozen: an offline-learned generator's views, no inner step (see OBJECTIVES).
  augment: Literal["learned", "fixed", "frozen"] = "learned"
  # dual_loop: inner step on L_aux, then L_out; joint: one step on L_aux + L_out (SCHEDULES).
  schedule: Literal["dual_loop", "joint"] = "dual_loop"
  order: Literal["second", "first"] = "second"   # through the inner step or not (ORDERS)
  inner_steps: int = 1
  inner_lr: float = 0.1
  aux_loss: str = "view_kl"          # a key of losses.AUX_LOSSES
  aux_penalty: float = 1.0           # weight of the generator's deviation penalty in L_aux
  consistency_weight: float = 1.0
  outer_steps: int = 1
  # every_step: the confident views are chosen anew at every outer step (the reconstruction);
  # first_step: chosen at the first outer step and kept (by view index), as TPT does.
  selection: Literal["every_step", "first_step"] = "every_step"
  # sgd: phi' = phi - inner_lr * g; normalized: phi' = phi - inner_lr * g / ||g|| (a step of
  # length inner_lr in parameter space, whatever the size of L_aux's gradient). INNER_STEP_SIZES.
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
  # Needs an auxiliary loss that is a mean of per-view terms (losses.PER_VIEW_AUX).
  view_chunk: int = 0

  @property
  def num_keep(self) -> int:
    return int(self.n_views * self.selection_ratio)

  def check(self) -> None:
    if isinstance(self.generator, dict):  # from a config
      object.__setattr__(self, "generator", gen.GeneratorSpec(**self.generator))
    if self.aux_loss not in losses.AUX_LOSSES:
      raise UserError(f"MetaTPTSpec.aux_loss={self.aux_loss!r} is not a valid choice; choose "
                      f"one of {tuple(losses.AUX_LOSSES)}.")
    if self.view_chunk < 0:
      raise UserError(f"MetaTPTSpec.view_chunk={self.view_chunk}; use 0 (all views at once) or "
                      "a positive number of views per chunk.")
    if self.view_chunk and self.aux_loss not in losses.PER_VIEW_AUX:
      raise UserError(f"MetaTPTSpec.view_chunk={self.view_chunk} needs an auxiliary loss that "
                      f"is a mean of per-view terms ({sorted(losses.PER_VIEW_AUX)}); aux_loss="
                      f"{self.aux_loss!r} is not: set view_chunk=0.")
    if self.num_keep < 1 or self.outer_steps < 1 or self.inner_steps < 0:
      raise UserError("MetaTPT needs n_views * selection_ratio >= 1, outer_steps >= 1 and "
                      f"inner_steps >= 0; got n_views={self.n_views}, selection_ratio="
                      f"{self.selection_ratio}, outer_steps={self.outer_steps}, inner_steps="
                      f"{self.inner_steps}.")


class Episode(NamedTuple):
  """Per-sample constants shared by the inner and outer losses."""
  image: jax.Array      # [S, S, 3] view 0
  feature0: jax.Array   # [E] view-0 feature (no gradient; conditions the generator)
  noise: jax.Array      # [K, F] generator noise, fixed for the episode
  source: views.Source | None = None  # the decoded image the views are cut from (None: image)


def make_episode(frozen: FrozenCLIP, image: jax.Array, key: jax.Array, spec: MetaTPTSpec,
                 mspec: ModelSpec, source: views.Source | None = None) -> Episode:
  """The episode of one image: its view-0 feature (no gradient), K noise vectors from key and
  the source the views are cut from (default: the image itself)."""
  feature0 = jax.lax.stop_gradient(encode_images(frozen, image[None], mspec)[0])
  return Episode(image, feature0, gen.sample_noise(key, spec.n_views - 1).astype(image.dtype),
                 source)


def view_features(frozen, phi, ep: Episode, spec: MetaTPTSpec, mspec: ModelSpec):
  """Features [K+1, E] of view 0 and the generated views (gradient flows to phi) + penalty."""
  all_views, penalty = gen.learned_views(phi, spec.generator, ep.image, ep.noise, ep.feature0,
                                         ep.source)
  feats = encode_images(frozen, all_views[1:], mspec, remat=mspec.remat)
  return jnp.concatenate([ep.feature0[None], feats], axis=0), penalty


def aux_loss(frozen, phi, ctx, ep, spec, mspec, head=None):
  """L_aux(phi; x, p): the self-supervised inner objective (+ deviation penalty).

  head(view_logits [V, C], feats [V, E]) -> scalar: the loss on the views; default
  losses.AUX_LOSSES[spec.aux_loss] (hypergrad swaps it for a traced switch)."""
  feats, penalty = view_features(frozen, phi, ep, spec, mspec)
  view_logits = logits(frozen, feats, class_features(frozen, ctx, mspec))
  head = losses.get_aux_loss(spec.aux_loss) if head is None else head
  return head(view_logits, feats) + spec.aux_penalty * penalty


def aux_grad(frozen, phi, ctx, ep, spec, mspec, head=None):
  """grad_phi L_aux(phi; x, p): all views at once, or by chunks when spec.view_chunk > 0."""
  if not spec.view_chunk:
    return jax.grad(aux_loss, argnums=1)(frozen, phi, ctx, ep, spec, mspec, head)
  if head is not None:
    raise ValueError("A replaced auxiliary loss (head) needs view_chunk=0: chunks use "
                     "losses.PER_VIEW_AUX[spec.aux_loss].")
  return chunked_aux_grad(frozen, phi, ctx, ep, spec, mspec)


def chunked_aux_grad(frozen, phi, ctx, ep, spec, mspec):
  """grad_phi L_aux as a sum over chunks of `spec.view_chunk` generated views.

  L_aux = mean_k l(f(view_k(phi)), p) + penalty(phi), so its gradient is a sum of per-chunk
  gradients. Each chunk's gradient is rematerialised (`jax.checkpoint`) inside `lax.scan`: a
  derivative of this function (the second-order meta-gradient) keeps only each chunk's inputs
  and recomputes one chunk at a time. The last chunk is padded with zero-weight views.
  """
  per_view = losses.get_per_view_aux_loss(spec.aux_loss)
  k, c = ep.noise.shape[0], spec.view_chunk
  n = -(-k // c)
  noise = jnp.pad(ep.noise, ((0, n * c - k), (0, 0))).reshape(n, c, -1)
  weight = ((jnp.arange(n * c) < k) / k).astype(ep.noise.dtype).reshape(n, c)
  text = class_features(frozen, ctx, mspec)
  ref_logits = logits(frozen, ep.feature0[None], text)[0]

  def chunk_loss(phi, text, ref_logits, noise_c, weight_c):
    thetas, _, _ = gen.generate_thetas(phi, spec.generator, noise_c, ep.feature0)
    feats = encode_images(frozen, gen.warp_views(thetas, ep.image, ep.source), mspec,
                          remat=mspec.remat)
    terms = per_view(logits(frozen, feats, text), feats, ref_logits, ep.feature0)
    return jnp.sum(weight_c * terms)

  chunk_grad = jax.checkpoint(jax.grad(chunk_loss))

  def body(total, xs):
    return jax.tree.map(jnp.add, total, chunk_grad(phi, text, ref_logits, *xs)), None

  zeros = jax.tree.map(jnp.zeros_like, phi)
  total, _ = jax.lax.scan(body, zeros, (noise, weight))
  penalty = lambda p: gen.generate_thetas(p, spec.generator, ep.noise, ep.feature0)[2]
  return jax.tree.map(lambda a, b: a + spec.aux_penalty * b, total, jax.grad(penalty)(phi))


def _global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(d ** 2) for d in jax.tree.leaves(tree)))


# inner_step -> the step size given the base rate and the inner gradient.
INNER_STEP_SIZES = {
    "sgd": lambda lr, g: lr,
    "normalized": lambda lr, g: lr / (_global_norm(g) + 1e-12),
}


def inner_step(frozen, phi, ctx, ep, spec, mspec, lr=None, head=None):
  """One step on L_aux: phi - step_size * grad_phi L_aux (`INNER_STEP_SIZES[spec.inner_step]`).

  lr: the base rate (default spec.inner_lr; may be traced); head: see `aux_loss`."""
  g = aux_grad(frozen, phi, ctx, ep, spec, mspec, head)
  step = INNER_STEP_SIZES[spec.inner_step](spec.inner_lr if lr is None else lr, g)
  return jax.tree.map(lambda w, d: w - step * d, phi, g)


def inner_update(frozen, phi, ctx, ep, spec, mspec):
  """phi' after `inner_steps` steps on L_aux; differentiable w.r.t. phi and ctx."""
  adapted = phi
  for _ in range(spec.inner_steps):  # few, static steps: unrolled
    adapted = inner_step(frozen, adapted, ctx, ep, spec, mspec)
  return ORDERS[spec.order](phi, adapted)


def first_order(phi, adapted):
  """phi' with the value of `adapted` but the gradient of `phi` (FOMAML: d phi'/d phi = I and
  no path to the prompt)."""
  return jax.tree.map(lambda w, a: w + jax.lax.stop_gradient(a - w), phi, adapted)


# order -> fn(phi, adapted phi') -> phi' as the outer loss sees it.
ORDERS = {"second": lambda phi, adapted: adapted, "first": first_order}


def consistency_and_keep(frozen, feats, ctx, spec, mspec, keep=None):
  """(L_cons, kept view indices) on fixed features; `keep` None selects the confident views."""
  view_logits = logits(frozen, feats, class_features(frozen, ctx, mspec))
  if keep is None:
    keep = losses.select_confident(view_logits, spec.num_keep)
  return losses.consistency_on_kept(view_logits[keep], spec.consistency_weight), keep


def consistency_on_generated(frozen, phi, ctx, ep, spec, mspec, keep=None):
  """L_cons on the views G_phi makes of the episode's image (gradient to phi and ctx)."""
  return generated_consistency_and_keep(frozen, phi, ctx, ep, spec, mspec, keep)[0]


def generated_consistency_and_keep(frozen, phi, ctx, ep, spec, mspec, keep=None):
  """(L_cons on G_phi's views, kept view indices); `keep` None selects the confident views."""
  if not spec.recompute_kept:
    feats, _ = view_features(frozen, phi, ep, spec, mspec)
    return consistency_and_keep(frozen, feats, ctx, spec, mspec, keep)
  all_views, _ = gen.learned_views(phi, spec.generator, ep.image, ep.noise, ep.feature0,
                                   ep.source)
  text = class_features(frozen, ctx, mspec)
  if keep is None:
    # Selection pass: no gradient, so XLA keeps no activations of the 63-view encoding.
    feats = jax.lax.stop_gradient(encode_images(frozen, all_views[1:], mspec))
    feats = jnp.concatenate([ep.feature0[None], feats], axis=0)
    keep = losses.select_confident(logits(frozen, feats, jax.lax.stop_gradient(text)),
                                   spec.num_keep)
  # Gradient pass over the kept views only (view 0, if kept, is the image: its gradient is 0).
  kept = encode_images(frozen, all_views[keep], mspec, remat=mspec.remat)
  return losses.consistency_on_kept(logits(frozen, kept, text), spec.consistency_weight), keep


def outer_loss(frozen, meta, ep, spec, mspec, keep=None):
  """L_out(p, phi) for meta = {"ctx": p, "phi": phi} under spec.schedule."""
  return outer_loss_and_keep(frozen, meta, ep, spec, mspec, keep)[0]


def outer_loss_and_keep(frozen, meta, ep, spec, mspec, keep=None):
  """(L_out, kept view indices) under spec.schedule; `keep` None selects the confident views."""
  return SCHEDULES[spec.schedule](frozen, meta, ep, spec, mspec, keep)


def dual_loop_loss_and_keep(frozen, meta, ep, spec, mspec, keep=None):
  """schedule="dual_loop" (the method): L_cons on the views of phi' = inner_update(phi, p)."""
  adapted = inner_update(frozen, meta["phi"], meta["ctx"], ep, spec, mspec)
  return generated_consistency_and_keep(frozen, adapted, meta["ctx"], ep, spec, mspec, keep)


def joint_loss_and_keep(frozen, meta, ep, spec, mspec, keep=None):
  """schedule="joint" (ablation): L_aux + L_cons on the same views of phi, no inner step."""
  feats, penalty = view_features(frozen, meta["phi"], ep, spec, mspec)
  view_logits = logits(frozen, feats, class_features(frozen, meta["ctx"], mspec))
  aux = losses.get_aux_loss(spec.aux_loss)(view_logits, feats) + spec.aux_penalty * penalty
  if keep is None:
    keep = losses.select_confident(view_logits, spec.num_keep)
  return aux + losses.consistency_on_kept(view_logits[keep], spec.consistency_weight), keep


SCHEDULES = {"dual_loop": dual_loop_loss_and_keep, "joint": joint_loss_and_keep}


def make_meta_optimizer(spec: MetaTPTSpec, tuned=("ctx", "phi")):
  """AdamW on the prompt (prompt_lr) and the generator (generator_lr), for meta dicts with the
  keys `tuned`."""
  adamw = lambda lr: optax.adamw(lr, weight_decay=spec.weight_decay)
  rates = {"ctx": spec.prompt_lr, "phi": spec.generator_lr}
  return optax.multi_transform({k: adamw(rates[k]) for k in tuned}, {k: k for k in tuned})


def _tune(loss_fn, meta, steps, optimizer, select_once: bool = False):
  """`steps` AdamW steps of loss_fn(meta, keep) -> (loss, keep) from a fresh optimiser state.

  The first step selects the confident views (keep=None); with `select_once` later steps reuse
  that selection, otherwise each step selects anew. Returns (meta, first loss).
  """
  def update(meta, opt_state, keep):
    (loss, keep), grads = jax.value_and_grad(loss_fn, has_aux=True)(meta, keep)
    updates, opt_state = optimizer.update(grads, opt_state, meta)
    return optax.apply_updates(meta, updates), opt_state, loss, keep

  meta, opt_state, loss0, keep = update(meta, optimizer.init(meta), None)

  def step(carry, _):
    meta, opt_state = carry
    meta, opt_state, loss, _ = update(meta, opt_state, keep if select_once else None)
    return (meta, opt_state), loss

  (meta, _), _ = jax.lax.scan(step, (meta, opt_state), None, length=steps - 1)
  return meta, loss0


def learned_views_objective(frozen, phi, ep, key, spec, mspec):
  """augment="learned" (the method): the outer loss of spec.schedule on the generator's views."""
  del phi, key  # meta["phi"] is the generator the loss differentiates
  return lambda meta, keep: outer_loss_and_keep(frozen, meta, ep, spec, mspec, keep)


def fixed_views_objective(frozen, phi, ep, key, spec, mspec):
  """augment="fixed" (ablation): L_cons on TPT's random crops; features once, no generator."""
  del phi
  all_views = views.tpt_views(ep.image, key, spec.n_views, ep.source)
  feats = jax.lax.stop_gradient(encode_images(frozen, all_views, mspec))
  return lambda meta, keep: consistency_and_keep(frozen, feats, meta["ctx"], spec, mspec, keep)


def frozen_generator_objective(frozen, phi, ep, key, spec, mspec):
  """augment="frozen" (ablation): L_cons on the views of a fixed phi (e.g. learned offline by
  `offline_generator.fit_offline_generator`); no inner step, only the prompt is tuned."""
  del key
  feats, _ = jax.lax.stop_gradient(view_features(frozen, phi, ep, spec, mspec))
  return lambda meta, keep: consistency_and_keep(frozen, feats, meta["ctx"], spec, mspec, keep)


# augment -> fn(frozen, phi, episode, key, spec, mspec) -> loss_fn(meta, keep) -> (loss, keep).
OBJECTIVES = {"learned": learned_views_objective, "fixed": fixed_views_objective,
              "frozen": frozen_generator_objective}
# selection -> whether later outer steps reuse the first step's confident views.
SELECT_ONCE = {"every_step": False, "first_step": True}


def metatpt_adapt_one_sample(frozen: FrozenCLIP, phi, image: jax.Array, key: jax.Array,
                             spec: MetaTPTSpec, mspec: ModelSpec,
                             source: views.Source | None = None):
  """Adapts (p, phi) to one image and predicts it with the adapted prompt on view 0.

  Args:
    frozen: CLIP parameters, prompt bank and initial context (reset every sample).
    phi: generator parameters to start from (initial, or the offline-learned ones).
    image: [S, S, 3] float in [0, 1], already resized and centre-cropped.
    key: this sample's PRNG key.
    source: the decoded image on a padded canvas the views are cut from (default: `image`).
  Returns:
    (logits [C], metrics) -- metrics hold the first outer loss and the adapted phi.
  """
  chex.assert_rank(image, 3)
  if phi is None and spec.augment != "fixed":
    raise UserError("MetaTPT needs generator parameters phi: pass "
                    "generator.init_generator(key, spec.generator, arch.embed_dim) (as "
                    "AdaptState(frozen, phi) for adapt.make_step).")
  ep = make_episode(frozen, image, key, spec, mspec, source)
  loss_fn = OBJECTIVES[spec.augment](frozen, phi, ep, key, spec, mspec)
  # Only the learned augmentation tunes phi; the ablations' views are fixed before tuning, so
  # phi stays out of their optimiser (no weight decay on a generator nothing reads).
  meta = {"ctx": frozen.ctx_init, "phi": phi} if spec.augment == "learned" else {
      "ctx": frozen.ctx_init}
  meta, loss0 = _tune(loss_fn, meta, spec.outer_steps, make_meta_optimizer(spec, tuple(meta)),
                      select_once=SELECT_ONCE[spec.selection])
  final = logits(frozen, ep.feature0[None], class_features(frozen, meta["ctx"], mspec))[0]
  return final, dict(loss=loss0, phi=meta.get("phi", phi))


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

"""What each MetaTPT ablation does, checked by behaviour (issue 14): fixed views give the
generator no gradient, a frozen generator is not changed per sample, the joint schedule is
L_aux + L_out on the same views, and the offline fit moves phi."""
import jax
import jax.numpy as jnp
import numpy as np

from metatpt_jax import generator as gen
from metatpt_jax import losses, metatpt, metatpt_inner, offline_generator
from metatpt_jax.frozen_clip import class_features, logits
from tests import method_helpers as h

# First order: these tests are about which views and objectives each ablation uses (second
# order through the inner step is tests/test_metatpt_grads.py's), and it compiles in a third.
SPEC = metatpt.MetaTPTSpec(n_views=8, selection_ratio=0.25, order="first",
                           generator=gen.GeneratorSpec(hidden=8))


def _setup(spec, seed=0):
  frozen, mspec = h.tiny_frozen(logit_scale=np.log(30.0))
  image = h.random_images(seed, 1)[0]
  phi = h.init_phi(spec, perturb=0.3)  # a generator whose views depend on phi
  ep = metatpt_inner.make_episode(frozen, image, jax.random.key(seed), spec, mspec)
  return frozen, mspec, phi, image, ep


def _grad_of_objective(augment):
  spec = SPEC.replace(augment=augment)
  frozen, mspec, phi, _, ep = _setup(spec)
  loss_fn = metatpt.OBJECTIVES[augment](frozen, phi, ep, jax.random.key(1), spec, mspec)
  meta = {"ctx": frozen.ctx_init, "phi": phi}
  return jax.jit(jax.grad(lambda m: loss_fn(m, None)[0]))(meta)


def _max_abs(tree):
  return max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(tree))


def test_fixed_and_frozen_views_give_the_generator_no_gradient():
  for augment in ("fixed", "frozen"):
    grads = _grad_of_objective(augment)
    assert _max_abs(grads["phi"]) == 0.0, augment
    assert _max_abs(grads["ctx"]) > 0.0, augment  # the prompt is still tuned
  # (The learned views' generator does get a gradient: test_learned_generator_is_tuned_per_sample.)


def test_frozen_generator_is_unchanged_per_sample_and_its_views_decide_the_prediction():
  spec = SPEC.replace(augment="frozen", outer_steps=2, prompt_lr=0.1)
  frozen, mspec, phi, image, _ = _setup(spec)
  run = jax.jit(lambda p: metatpt.metatpt_adapt_one_sample(frozen, p, image, jax.random.key(0),
                                                           spec, mspec))
  out, metrics = run(phi)
  for a, b in zip(jax.tree.leaves(metrics["phi"]), jax.tree.leaves(phi)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Another generator makes other views, so another prediction: phi is read, not ignored.
  other, _ = run(h.init_phi(spec, seed=5, perturb=0.3))
  assert not np.allclose(np.asarray(out), np.asarray(other), atol=1e-6)


def test_learned_generator_is_tuned_per_sample():
  spec = SPEC.replace(generator_lr=0.1)
  frozen, mspec, phi, image, _ = _setup(spec)
  _, metrics = jax.jit(lambda p: metatpt.metatpt_adapt_one_sample(
      frozen, p, image, jax.random.key(0), spec, mspec))(phi)
  moved = jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), metrics["phi"], phi)
  assert _max_abs(moved) > 1e-4


def test_joint_schedule_is_aux_plus_consistency_on_the_same_views():
  spec = SPEC.replace(schedule="joint")
  frozen, mspec, phi, _, ep = _setup(spec)

  @jax.jit
  def three_ways(phi):
    meta = {"ctx": frozen.ctx_init, "phi": phi}
    joint, keep = metatpt.joint_loss_and_keep(frozen, meta, ep, spec, mspec)
    # By hand: the views of phi (no inner step), L_aux on all of them, L_cons on the confident.
    feats, penalty = metatpt_inner.view_features(frozen, phi, ep, spec, mspec)
    view_logits = logits(frozen, feats, class_features(frozen, frozen.ctx_init, mspec))
    want_keep = losses.select_confident(view_logits, spec.num_keep)
    by_hand = (metatpt_inner.inner_loss(frozen, phi, frozen.ctx_init, ep, spec, mspec,
                                        spec.inner_objective())
               + losses.marginal_entropy_and_consistency(view_logits[want_keep],
                                                         spec.consistency_weight))
    del penalty  # inner_loss adds it itself
    dual = metatpt.dual_loop_loss_and_keep(frozen, meta, ep, spec, mspec)[0]
    return joint, keep, by_hand, want_keep, dual

  joint, keep, by_hand, want_keep, dual = three_ways(phi)
  np.testing.assert_array_equal(np.asarray(keep), np.asarray(want_keep))
  np.testing.assert_allclose(float(joint), float(by_hand), rtol=1e-5)
  # And not the dual loop's value (which first takes the inner step).
  assert abs(float(dual) - float(joint)) > 1e-4


def test_offline_fit_moves_phi_and_reports_each_images_loss():
  spec = SPEC.replace(augment="frozen", generator_lr=0.05)
  frozen, mspec, phi, _, _ = _setup(spec)
  images = h.random_images(3, 3)
  fitted, stream = jax.jit(offline_generator.fit_offline_generator, static_argnums=(4, 5))(
      frozen, phi, images, jax.random.key(2), spec, mspec)
  assert stream.shape == (3,) and np.all(np.isfinite(np.asarray(stream)))
  moved = jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), fitted, phi)
  assert _max_abs(moved) > 1e-3

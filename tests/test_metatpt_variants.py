"""The MetaTPT variants of issue 12: selection once or every step, a normalised inner step, a
per-sample factor shift in the generator, and the content-keeping inner objective."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from metatpt_jax import generator as gen
from metatpt_jax import losses, metatpt, metatpt_inner, tpt
from metatpt_jax.bench import methods as methods_lib
from metatpt_jax.errors import UserError
from tests.method_helpers import init_phi, random_images, tiny_frozen

SPEC = metatpt.MetaTPTSpec(n_views=16, selection_ratio=0.25)


def _adapt(spec, seed=0, logit_scale=30.0):
  frozen, mspec = tiny_frozen(logit_scale=logit_scale)
  image = random_images(seed, 1)[0]
  phi = init_phi(spec)
  fn = jax.jit(lambda f, p, x, k: metatpt.metatpt_adapt_one_sample(f, p, x, k, spec, mspec))
  return fn(frozen, phi, image, jax.random.key(seed))


def test_selection_once_equals_every_step_at_one_outer_step():
  spec = SPEC.replace(augment="fixed")  # tune's first step is shared by every augment
  a, _ = _adapt(spec.replace(selection="every_step"))
  b, _ = _adapt(spec.replace(selection="first_step"))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_selection_once_keeps_the_first_steps_views():
  """With fixed features, selecting once equals tuning on the first step's kept views; where the
  confident set moves during tuning, re-selecting at every step takes another path."""
  frozen, mspec = tiny_frozen(logit_scale=1.0)  # soft predictions: the entropies move
  spec = SPEC.replace(augment="fixed", outer_steps=4, prompt_lr=0.1, selection="first_step")
  opt = metatpt.make_meta_optimizer(spec)
  meta = {"ctx": frozen.ctx_init, "phi": None}

  @jax.jit
  def three_ways(feats):
    def loss(m, k):
      value, keep = metatpt.outer_loss_on_features(frozen, feats, m["ctx"], spec, mspec, k)
      return value, (keep, None)

    _, (keep, _) = loss(meta, None)
    once, _ = tpt.tune(loss, meta, spec.outer_steps, opt, select_once=True)
    fixed, _ = tpt.tune(lambda m, k: loss(m, keep), meta, spec.outer_steps, opt,
                        select_once=False)
    every, _ = tpt.tune(loss, meta, spec.outer_steps, opt, select_once=False)
    return once["ctx"], fixed["ctx"], every["ctx"]

  differs = []
  for seed in range(4):
    feats = jax.random.normal(jax.random.key(seed), (spec.n_views, 16))
    once, fixed, every = map(np.asarray, three_ways(feats))
    np.testing.assert_allclose(once, fixed, atol=1e-6)
    differs.append(not np.allclose(once, every, atol=1e-4))
  assert any(differs), "the confident set never moved: the test cannot tell the modes apart"


def test_normalized_inner_step_has_length_inner_lr():
  frozen, mspec = tiny_frozen(logit_scale=30.0)
  spec = SPEC.replace(inner_step="normalized", inner_lr=0.5,
                       generator=gen.GeneratorSpec(factor_shift=True))
  image = random_images(1, 1)[0]
  ep = metatpt_inner.make_episode(frozen, image, jax.random.key(0), spec, mspec)
  phi = init_phi(spec)
  adapted = jax.jit(lambda f, p, e: metatpt_inner.inner_update(f, p, f.ctx_init, e, spec, mspec))(
      frozen, phi, ep)
  step = jax.tree.map(lambda a, b: a - b, adapted, phi)
  length = float(jnp.sqrt(sum(jnp.sum(d ** 2) for d in jax.tree.leaves(step))))
  assert length == pytest.approx(0.5, rel=1e-4)


@pytest.mark.parametrize("logit_scale", [3.0, 30.0])
def test_normalized_step_on_the_factor_shift_moves_the_views(logit_scale):
  """Whatever the size of L_aux's gradient (here from 0.4 to 3e11 on the random tiny model),
  one normalised inner step on the factor shift moves every generated view."""
  frozen, mspec = tiny_frozen(logit_scale=logit_scale)
  image = random_images(2, 1)[0]
  spec = SPEC.replace(inner_step="normalized", inner_lr=0.5,
                       generator=gen.GeneratorSpec(factor_shift=True))
  before, after = jax.jit(metatpt.views_before_and_after_inner, static_argnums=(4, 5))(
      frozen, init_phi(spec), image, jax.random.key(0), spec, mspec)
  change = np.asarray(jnp.mean(jnp.abs(after - before), axis=(1, 2, 3)))
  assert change[0] == 0.0  # view 0 is the image
  assert change[1:].min() > 1e-2, change


def test_factor_shift_starts_at_the_base_distribution():
  spec = gen.GeneratorSpec(factor_shift=True)
  phi = gen.init_generator(jax.random.key(0), spec, 16)
  plain = gen.init_generator(jax.random.key(0), gen.GeneratorSpec(), 16)
  noise = gen.sample_noise(jax.random.key(1), 8)
  feature = jax.random.normal(jax.random.key(2), (16,))
  a, _, _ = gen.generate_thetas(phi, spec, noise, feature)
  b, _, _ = gen.generate_thetas(plain, gen.GeneratorSpec(), noise, feature)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(np.asarray(phi["shift"]), np.zeros(gen.NUM_FACTORS))


def test_confident_agreement_values():
  c = 5
  same = jnp.tile(jnp.array([[4.0, 0, 0, 0, 0]]), (4, 1))
  uniform = jnp.zeros((4, c))
  aux = losses.INNER_OBJECTIVES["confident_agreement"].views_term
  # identical views: no disagreement, only their entropy; uniform views: entropy log C
  np.testing.assert_allclose(aux(same, None), losses.view_entropy(same)[0], rtol=1e-6)
  np.testing.assert_allclose(aux(uniform, None), np.log(c), rtol=1e-6)


@pytest.mark.parametrize("field,value", [("selection", "once"), ("inner_step", "adam")])
def test_variant_typos_are_refused(field, value):
  cfg = ml_collections.ConfigDict(dict(kind="metatpt", **{field: value}))
  with pytest.raises(UserError, match=field):
    methods_lib.method_spec(cfg)


def test_normalized_inner_step_is_bit_for_bit_the_recorded_formula():
  """Committed records of inner_step="normalized" were computed as w - (lr / (|g| + 1e-12)) g:
  the optax form must give the same bits, or resumed cells would mix two computations."""
  keys = jax.random.split(jax.random.key(0), 2)
  phi = {"a": jax.random.normal(keys[0], (300,)), "b": jax.random.normal(keys[1], (7, 11))}
  grads = jax.tree.map(lambda x: 3.7 * jnp.sin(x), phi)
  norm = jnp.sqrt(sum(jnp.sum(d ** 2) for d in jax.tree.leaves(grads)))
  want = jax.tree.map(lambda w, d: w - (0.1 / (norm + 1e-12)) * d, phi, grads)
  for name, expected in (("normalized", want),
                         ("sgd", jax.tree.map(lambda w, d: w - 0.1 * d, phi, grads))):
    opt = metatpt_inner.inner_optimizer(name, 0.1)
    updates, _ = opt.update(grads, opt.init(phi), phi)
    got = optax.apply_updates(phi, updates)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_sweep_refuses_what_it_cannot_do():
  frozen, mspec = tiny_frozen(logit_scale=30.0)
  image = random_images(0, 1)[0]
  spec = SPEC.replace(inner_steps=1)
  ep = metatpt_inner.make_episode(frozen, image, jax.random.key(0), spec, mspec)
  meta = {"ctx": frozen.ctx_init, "phi": init_phi(spec)}
  with pytest.raises(ValueError, match="at most spec.inner_steps=1"):
    metatpt.outer_loss(frozen, meta, ep, spec, mspec, sweep=metatpt_inner.InnerSweep(steps=2))
  with pytest.raises(ValueError, match="needs schedule='dual_loop'"):
    metatpt.outer_loss(frozen, meta, ep, spec.replace(schedule="joint"), mspec,
                       sweep=metatpt_inner.InnerSweep(lr=0.3))
  with pytest.raises(ValueError, match="leave penalty_weight at its default"):
    losses.register_inner_objective("weighted", losses.InnerObjective(
        per_view=lambda *a: a[1].sum(-1), penalty_weight=2.0))

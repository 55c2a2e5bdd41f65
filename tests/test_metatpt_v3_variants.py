"""The MetaTPT variants of world v3 (issue 24): photometric factors in the generator, inner
objectives not anchored on view 0, and a generator that persists along the stream."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metatpt_jax import adapt, losses, metatpt, registry
from metatpt_jax import generator as gen
from metatpt_jax.errors import UserError
from tests.method_helpers import TEST_ARCH, init_phi, random_images, tiny_frozen

SPEC = metatpt.MetaTPTSpec(n_views=16, selection_ratio=0.25)
PHOTO = gen.GeneratorSpec(photometric=True)


def _view(seed=0, size=16):
  return jax.random.uniform(jax.random.key(seed), (size, size, 3), minval=0.1, maxval=0.9)


def test_photometric_factors_are_the_identity_at_zero_and_act_as_named():
  view = _view()
  identity = gen.photometric_factors(jnp.zeros(5), PHOTO)
  np.testing.assert_allclose(np.asarray(identity), [0.0, 1.0, 1.0, 1.0, 0.0], atol=1e-7)
  np.testing.assert_allclose(np.asarray(gen.adjust_photometric(view, identity)),
                             np.asarray(view), atol=1e-5)
  adjust = lambda **f: gen.adjust_photometric(view, jnp.asarray(
      [f.get("b", 0.0), f.get("c", 1.0), f.get("s", 1.0), f.get("g", 1.0), f.get("blur", 0.0)]))
  grey = lambda x: x @ jnp.asarray([0.299, 0.587, 0.114])
  assert adjust(b=0.1).mean() > view.mean() + 0.09
  assert adjust(c=1.4).std() > 1.3 * view.std()
  assert jnp.abs(adjust(s=0.0) - grey(adjust(s=0.0))[..., None]).max() < 1e-5  # no colour left
  assert adjust(g=1.5).mean() < view.mean() - 0.02                            # darker
  rough = lambda x: jnp.abs(jnp.diff(x, axis=0)).mean()
  assert rough(adjust(blur=1.0)) < 0.6 * rough(view)
  # The bounds hold for any raw value.
  extreme = gen.photometric_factors(jnp.asarray([9.0, 9.0, -9.0, 9.0, 9.0]), PHOTO)
  np.testing.assert_allclose(np.asarray(extreme), [0.2, 1.5, 1 / 1.5, 1.5, 1.0], rtol=1e-5)


def test_photometric_generator_at_zero_noise_makes_the_reconstructions_views():
  """Through make_episode, as the method draws them: the same crops, and with the photometric
  noise at 0 the same views; the generator's penalty is the affine one."""
  frozen, mspec = tiny_frozen(logit_scale=np.log(30.0))
  image = random_images(0, 1)[0]
  plain = SPEC
  photo = SPEC.replace(generator=PHOTO._replace(photometric_noise=0.0))
  views = {}
  for name, spec in (("plain", plain), ("photo", photo)):
    ep = metatpt.make_episode(frozen, image, jax.random.key(3), spec, mspec)
    views[name] = gen.learned_views(init_phi(spec), spec.generator, image, ep.noise,
                                    ep.feature0)
  assert ep.noise.shape == (SPEC.n_views - 1, gen.NUM_FACTORS + len(gen.PHOTOMETRIC_FACTORS))
  np.testing.assert_allclose(np.asarray(views["photo"][0]), np.asarray(views["plain"][0]),
                             atol=1e-5)
  assert float(views["photo"][1]) == float(views["plain"][1]) == 0.0
  with pytest.raises(ValueError, match="sample_noise"):  # noise drawn for another generator
    gen.learned_views(init_phi(photo), photo.generator, image, ep.noise[:, :gen.NUM_FACTORS],
                      ep.feature0)


def test_the_inner_step_moves_the_photometric_factors():
  frozen, mspec = tiny_frozen(logit_scale=np.log(30.0))
  spec = SPEC.replace(generator=PHOTO, inner_lr=1.0)
  image = random_images(0, 1)[0]
  ep = metatpt.make_episode(frozen, image, jax.random.key(0), spec, mspec)
  phi = init_phi(spec)
  adapted = jax.jit(metatpt.inner_update, static_argnums=(4, 5))(
      frozen, phi, frozen.ctx_init, ep, spec, mspec)
  factors = lambda p: gen.generate_transforms(p, spec.generator, ep.noise, ep.feature0)[0]
  before, after = factors(phi).photometric, factors(adapted).photometric
  assert before.shape == (spec.n_views - 1, 5)
  assert float(jnp.abs(after - before).max()) > 1e-4
  # ... and the outer loss reaches them (second order through the inner step).
  grads = jax.jit(jax.grad(lambda p: metatpt.outer_loss(
      frozen, {"ctx": frozen.ctx_init, "phi": p}, ep, spec, mspec)))(phi)
  assert float(jnp.abs(grads["out"]["kernel"][:, gen.NUM_FACTORS:]).max()) > 0.0


def test_consensus_objectives_ignore_view_0_and_vanish_when_views_agree():
  key = jax.random.key(0)
  logits = jax.random.normal(key, (9, 5)) * 3
  feats = jax.random.normal(jax.random.key(1), (9, 7))
  for name in ("confident_consensus", "feature_consensus"):
    term = losses.INNER_OBJECTIVES[name].views_term
    moved = term(logits.at[0].set(-logits[0]), feats.at[0].set(-feats[0]))
    np.testing.assert_allclose(float(term(logits, feats)), float(moved), rtol=1e-6)
    assert float(term(logits, feats)) > 1e-3
  same_logits = jnp.tile(logits[1:2], (9, 1)).at[0].set(logits[0])
  assert abs(float(losses.INNER_OBJECTIVES["confident_consensus"].views_term(
      same_logits, None))) < 1e-6
  scaled = feats[1:2] * jnp.arange(1.0, 10.0)[:, None]  # one direction, any length
  assert abs(float(losses.INNER_OBJECTIVES["feature_consensus"].views_term(
      None, scaled.at[0].set(feats[0])))) < 1e-6
  # Only the most confident views count: a tenth of the generated views (at least two).
  confident = jnp.zeros((21, 5)).at[1:3].set(jnp.array([[9.0, 0, 0, 0, 0], [0, 9.0, 0, 0, 0]]))
  assert float(losses.confident_consensus(confident[1:])) > 0.3  # the two sure views disagree


def _stream_setup(spec, n=3):
  frozen, mspec = tiny_frozen(logit_scale=np.log(30.0))
  images = random_images(0, n)
  keys = jax.random.split(jax.random.key(5), n)
  return frozen, mspec, images, keys, init_phi(spec)


def test_a_stream_generator_starts_each_sample_where_the_last_ended():
  """The generator and its AdamW state carry; the prompt resets."""
  spec = SPEC.replace(generator_memory="stream", generator_lr=0.05)
  frozen, mspec, images, keys, _ = _stream_setup(spec)
  start = metatpt._init_generator(jax.random.key(1), spec, TEST_ARCH, 5)
  assert isinstance(start, metatpt.StreamState)
  end, out, _ = jax.jit(metatpt.metatpt_stream, static_argnums=(4, 5))(
      frozen, start, images, keys, spec, mspec)
  one = jax.jit(metatpt.metatpt_adapt_one_sample, static_argnums=(4, 5))
  phi, opt, expected = start.phi, start.opt, []
  for image, key in zip(images, keys):
    logits, metrics = one(frozen, phi, image, key, spec, mspec, None, opt)
    phi, opt = metrics["phi"], metrics["generator_opt"]
    expected.append(logits)
  np.testing.assert_allclose(np.asarray(out), np.asarray(jnp.stack(expected)), atol=1e-5)
  for a, b in zip(jax.tree.leaves(end), jax.tree.leaves((phi, opt))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
  assert int(jax.tree.leaves(end.opt)[0]) == len(images)  # Adam's step count went on
  moved = max(float(jnp.abs(a - b).max())
              for a, b in zip(jax.tree.leaves(end.phi), jax.tree.leaves(start.phi)))
  assert moved > 1e-4  # the generator did carry something
  # Episodic MetaTPT starts every sample from the initial phi: the last sample's logits differ.
  episodic, _ = one(frozen, start.phi, images[-1], keys[-1], spec.replace(
      generator_memory="episodic"), mspec)
  assert not np.allclose(np.asarray(episodic), np.asarray(out[-1]), atol=1e-6)


def test_the_step_streams_exactly_when_the_spec_says_so():
  method = registry.get("metatpt")
  assert not method.is_online(SPEC)
  assert method.is_online(SPEC.replace(generator_memory="stream"))
  spec = SPEC.replace(generator_memory="stream")
  frozen, mspec, images, keys, _ = _stream_setup(spec, 2)
  phi0 = metatpt._init_generator(jax.random.key(1), spec, TEST_ARCH, 5)
  state = adapt.AdaptState(frozen, phi0)
  batch = dict(image=images, index=jnp.arange(2, dtype=jnp.int32))
  carried, metrics = adapt.make_step("metatpt", spec, mspec)(state, batch, jax.random.key(0))
  assert metrics["logits"].shape[0] == 2 and np.isfinite(np.asarray(metrics["logits"])).all()
  assert any(not np.allclose(np.asarray(a), np.asarray(b))
             for a, b in zip(jax.tree.leaves(carried.method_state), jax.tree.leaves(phi0)))
  with pytest.raises(UserError, match="augment='learned'"):
    SPEC.replace(generator_memory="stream", augment="fixed")


def test_new_fields_at_their_defaults_leave_record_fingerprints_alone():
  from metatpt_jax.bench import fingerprint as fp
  plain = fp.result_fields(SPEC)
  assert "generator_memory" not in plain
  assert not set(gen.GeneratorSpec().later_fields) & set(plain["generator"])
  changed = fp.result_fields(SPEC.replace(generator=PHOTO, generator_memory="stream"))
  assert changed["generator_memory"] == "stream" and changed["generator"]["photometric"] is True
  assert changed["generator"]["max_gamma"] == 1.5  # with photometric factors, bounds recorded

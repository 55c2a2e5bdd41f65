"""metatpt_jax.hypergrad: second vs first order meta-gradients, the swept loss, FD checks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metatpt_jax import generator as gen
from metatpt_jax import gradcheck, hypergrad, metatpt
from tests import method_helpers as h

SPEC = metatpt.MetaTPTSpec(n_views=8, selection_ratio=0.5, inner_lr=0.5,
                           generator=gen.GeneratorSpec(hidden=8))
# float64 throughout: an inner step of lr 0.5 amplifies fp32 rounding to ~1e-5 relative, which
# would blur "equal" and "different"; in float64 equal means equal to ~1e-12. FD steps as in
# tests/test_metatpt_grads.py: small enough that no bilinear sample point crosses a pixel
# boundary (where the derivative jumps), large enough that float64 rounding stays ~1e-9.
FD_EPS = 1e-7


pytestmark = pytest.mark.usefixtures("x64")


@pytest.fixture(scope="module")
def tiny(x64):
  frozen, mspec = h.tiny_frozen(dtype=jnp.float64, logit_scale=np.log(10.0))
  image = h.random_images(3, 1)[0].astype(jnp.float64)
  phi = h.init_phi(SPEC, dtype=jnp.float64, perturb=0.3)
  return frozen, mspec, phi, image, jax.random.key(4)


def _assert_trees_close(got, want, rtol=1e-9):
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * float(jnp.abs(b).max()))


@pytest.mark.parametrize("aux_loss,prompt_term", [("view_kl", True),
                                                  ("embedding_agreement", False)])
def test_prompt_gets_a_second_order_term_only_from_a_prompt_dependent_aux_loss(
    tiny, aux_loss, prompt_term):
  frozen, mspec, phi, image, key = tiny
  spec = SPEC.replace(aux_loss=aux_loss)
  g2, g1 = jax.jit(hypergrad.hypergradients, static_argnums=(4, 5))(frozen, phi, image, key,
                                                                       spec, mspec)
  ctx = hypergrad.compare(g2["ctx"], g1["ctx"])
  if prompt_term:
    assert ctx["cosine"] < 0.9999, ctx
  else:  # d phi'/d p = 0: the same prompt gradient up to rounding
    _assert_trees_close(g2["ctx"], g1["ctx"])
  # phi always gets (I - alpha * H) from the inner step.
  assert hypergrad.compare(g2["phi"], g1["phi"])["cosine"] < 0.9999


def test_swept_gradients_equal_the_spec_path_and_compile_once(tiny):
  frozen, mspec, phi, image, key = tiny
  spec = SPEC.replace(inner_steps=2)  # the most steps the sweep may take
  swept = jax.jit(hypergrad.swept_hypergradients, static_argnums=(4, 5))
  exact = jax.jit(hypergrad.hypergradients, static_argnums=(4, 5))
  # The inner loss is traced too (aux_index), as notebook 01 uses it.
  for lr, steps, aux in ((0.3, 1, "view_kl"), (0.5, 2, "embedding_agreement")):
    got = swept(frozen, phi, image, key, spec, mspec, lr, steps,
                hypergrad.SWEPT_AUX_LOSSES.index(aux))
    want = exact(frozen, phi, image, key,
                 spec.replace(inner_lr=lr, inner_steps=steps, aux_loss=aux), mspec)
    for g, w in zip(got, want):  # both orders
      _assert_trees_close(g, w)
  assert swept._cache_size() == 1


def test_second_order_matches_central_differences_and_first_order_does_not(tiny):
  frozen, mspec, phi, image, key = tiny
  meta = {"ctx": frozen.ctx_init, "phi": phi}
  loss = jax.jit(hypergrad.meta_loss_fn(frozen, image, key, SPEC, mspec))
  g2, g1 = jax.jit(hypergrad.hypergradients, static_argnums=(4, 5))(frozen, phi, image, key,
                                                                       SPEC, mspec)
  for seed in range(2):
    d = gradcheck.random_direction(jax.random.key(seed), meta)
    fd = gradcheck.central_difference(loss, meta, d, FD_EPS)
    err2 = gradcheck.relative_error(gradcheck.directional_derivative(g2, d), fd)
    err1 = gradcheck.relative_error(gradcheck.directional_derivative(g1, d), fd)
    print(f"direction {seed}: relative error second order {err2:.1e}, first order {err1:.1e}")
    assert err2 < 1e-6, (seed, err2)
    assert err1 > 100 * err2, (seed, err1, err2)


def test_compare():
  g = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([[3.0]])}
  same = hypergrad.compare(g, g)
  assert same["cosine"] == pytest.approx(1.0) and same["norm_ratio"] == pytest.approx(1.0)
  flipped = hypergrad.compare(jax.tree.map(lambda x: -2 * x, g), g)
  assert flipped["cosine"] == pytest.approx(-1.0) and flipped["norm_ratio"] == pytest.approx(2.0)

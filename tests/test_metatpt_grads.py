"""Second-order meta-gradients of MetaTPT: check_grads, finite differences, first-order switch."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from metatpt_jax import generator as gen
from metatpt_jax import gradcheck, metatpt, metatpt_inner
from metatpt_jax.frozen_clip import encode_images
from tests import method_helpers as h

# float64 makes second-order finite differences meaningful (fp32 FD noise ~1e-3 would hide
# errors of that size). Bilinear sampling is only piecewise smooth: its derivative jumps where a
# sample point crosses a pixel boundary. FD steps of 1e-7 (in parameter space) stay inside one
# cell for all ~1,800 sample points here; steps of 1e-5 cross some and disagree by ~1e-3.
FD_EPS = 1e-7
pytestmark = pytest.mark.usefixtures("x64")

SPEC = metatpt.MetaTPTSpec(n_views=8, selection_ratio=0.5, inner_lr=0.5,
                           generator=gen.GeneratorSpec(hidden=8))


def _setup(spec=SPEC):
  frozen, mspec = h.tiny_frozen(dtype=jnp.float64, logit_scale=np.log(10.0))
  image = h.random_images(3, 1)[0].astype(jnp.float64)
  feature0 = jax.lax.stop_gradient(encode_images(frozen, image[None], mspec)[0])
  ep = metatpt_inner.Episode(image, feature0, gen.sample_noise(jax.random.key(4), spec.n_views - 1)
                        .astype(jnp.float64))
  phi = h.init_phi(spec, dtype=jnp.float64, perturb=0.3)
  return frozen, mspec, ep, {"ctx": frozen.ctx_init, "phi": phi}


def _loss(spec):
  frozen, mspec, ep, meta = _setup(spec)
  return jax.jit(lambda m: metatpt.outer_loss(frozen, m, ep, spec, mspec)), meta


def test_check_grads_order2_through_inner_step():
  loss, meta = _loss(SPEC)
  # modes fwd+rev to order 2 covers the Hessian-vector products a MAML user would take.
  check_grads(jax.jit(loss), (meta,), order=2, modes=("rev",), atol=1e-5, rtol=1e-5, eps=FD_EPS)


def test_meta_gradient_matches_central_differences():
  loss, meta = _loss(SPEC)
  grads = jax.grad(loss)(meta)
  for seed in range(4):  # random directions, so every parameter is probed
    d = gradcheck.random_direction(jax.random.key(seed), meta)
    fd = gradcheck.central_difference(loss, meta, d, FD_EPS)
    np.testing.assert_allclose(gradcheck.directional_derivative(grads, d), fd, rtol=1e-6,
                               atol=1e-8)


def test_second_order_differs_from_first_order_when_aux_uses_prompt():
  g2 = jax.grad(_loss(SPEC)[0])(_loss(SPEC)[1])
  first = SPEC.replace(order="first")
  loss1, meta = _loss(first)
  g1 = jax.grad(loss1)(meta)
  diff = float(jnp.abs(g2["ctx"] - g1["ctx"]).max())
  assert diff > 1e-6 * float(jnp.abs(g1["ctx"]).max()), "no second-order term reached the prompt"


def test_second_order_equals_first_order_for_prompt_without_cross_term():
  # A prompt-free inner loss has no d phi'/d p, so the prompt's meta-gradient is first order.
  spec = SPEC.replace(aux_loss="embedding_agreement")
  loss2, meta = _loss(spec)
  loss1, _ = _loss(spec.replace(order="first"))
  g2, g1 = jax.grad(loss2)(meta), jax.grad(loss1)(meta)
  np.testing.assert_allclose(g2["ctx"], g1["ctx"], rtol=1e-10, atol=1e-14)
  # ... while phi still gets its second-order term (I - alpha * Hessian) from the inner step.
  diff = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), g2["phi"], g1["phi"])
  assert max(jax.tree.leaves(diff)) > 1e-8


def test_first_order_gradient_is_outer_gradient_at_adapted_phi():
  # FOMAML: grad w.r.t. phi equals grad of the outer loss evaluated at phi' (identity Jacobian).
  spec = SPEC.replace(order="first")
  frozen, mspec, ep, meta = _setup(spec)
  # jitted: op-by-op float64 differentiation of the towers took about a minute
  adapted = jax.jit(lambda phi: metatpt_inner.inner_update(frozen, phi, meta["ctx"], ep, spec,
                                                            mspec))(meta["phi"])
  g1 = jax.jit(jax.grad(lambda m: metatpt.outer_loss(frozen, m, ep, spec, mspec)))(meta)

  def at_adapted(phi_prime):
    feats, _ = metatpt_inner.view_features(frozen, phi_prime, ep, spec, mspec)
    return metatpt.outer_loss_on_features(frozen, feats, meta["ctx"], spec, mspec)[0]
  g_direct = jax.jit(jax.grad(at_adapted))(adapted)
  for a, b in zip(jax.tree.leaves(g1["phi"]), jax.tree.leaves(g_direct)):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("order", ["second", "first"])
def test_recomputing_kept_views_gives_the_all_views_gradient(order):
  # The outer loss reads only the confident views and selection is stop-gradient, so encoding
  # just those with gradient (the default) must give the gradient through every view's encoding.
  spec = SPEC.replace(order=order)
  loss_kept, meta = _loss(spec)
  loss_all, _ = _loss(spec.replace(recompute_kept=False))
  np.testing.assert_allclose(float(loss_kept(meta)), float(loss_all(meta)), rtol=1e-12)
  g_kept, g_all = jax.grad(loss_kept)(meta), jax.grad(loss_all)(meta)
  for a, b in zip(jax.tree.leaves(g_kept), jax.tree.leaves(g_all)):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-13)
  # Not vacuous: the gradient reaches phi through the kept views.
  assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g_kept["phi"])) > 1e-6

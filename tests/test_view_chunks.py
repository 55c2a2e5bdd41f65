"""The inner gradient over chunks of views (MetaTPTSpec.view_chunk) is the same meta-gradient.

Chunking only changes how the work is split: the meta-gradient through the inner step must equal
the all-views one (float64 to 1e-9; float32 to 2e-5 relative, the round-off of summing per-chunk
gradients in another order), second-order `check_grads` must still pass through the chunked
scan, and first order must be unchanged. 7 generated views in chunks of 3 make the last chunk
padded (3 + 3 + 1 real views), so the zero-weight padding is exercised too.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from metatpt_jax import generator as gen
from metatpt_jax import losses, metatpt, metatpt_inner
from metatpt_jax.bench import fingerprint as fp_lib
from metatpt_jax.errors import UserError
from metatpt_jax.frozen_clip import encode_images
from tests import method_helpers as h

SPEC = metatpt.MetaTPTSpec(n_views=8, selection_ratio=0.5, inner_lr=0.5,
                           generator=gen.GeneratorSpec(hidden=8))
FD_EPS = 1e-7  # as tests/test_metatpt_grads.py: steps that stay inside one bilinear cell


def _setup(dtype, spec=SPEC):
  frozen, mspec = h.tiny_frozen(dtype=dtype, logit_scale=np.log(10.0))
  image = h.random_images(3, 1)[0].astype(dtype)
  feature0 = jax.lax.stop_gradient(encode_images(frozen, image[None], mspec)[0])
  ep = metatpt_inner.Episode(image, feature0,
                       gen.sample_noise(jax.random.key(4), spec.n_views - 1).astype(dtype))
  phi = h.init_phi(spec, dtype=dtype, perturb=0.3)
  return frozen, mspec, ep, {"ctx": frozen.ctx_init, "phi": phi}


def _meta_grad(spec, dtype):
  frozen, mspec, ep, meta = _setup(dtype, spec)
  loss = jax.jit(lambda m: metatpt.outer_loss(frozen, m, ep, spec, mspec))
  return loss(meta), jax.grad(loss)(meta)


def _max_rel(a, b):
  a, b = jax.flatten_util.ravel_pytree(a)[0], jax.flatten_util.ravel_pytree(b)[0]
  return float(jnp.abs(a - b).max() / jnp.abs(b).max())


@pytest.mark.parametrize("aux", ["view_kl", "embedding_agreement", "confident_agreement"])
def test_chunked_meta_gradient_equals_all_views_float64(aux):
  with jax.enable_x64(True):
    spec = SPEC.replace(aux_loss=aux)
    loss_all, g_all = _meta_grad(spec, jnp.float64)
    loss_chunk, g_chunk = _meta_grad(spec.replace(view_chunk=3), jnp.float64)
    assert abs(float(loss_all - loss_chunk)) <= 1e-12
    assert _max_rel(g_chunk, g_all) <= 1e-9
    # Not vacuous: the inner step moved phi, so the second-order path carries gradient.
    assert float(jnp.abs(jax.flatten_util.ravel_pytree(g_all["phi"])[0]).max()) > 1e-6


def test_chunked_meta_gradient_equals_all_views_float32():
  loss_all, g_all = _meta_grad(SPEC, jnp.float32)
  loss_chunk, g_chunk = _meta_grad(SPEC.replace(view_chunk=2), jnp.float32)
  assert abs(float(loss_all - loss_chunk)) <= 1e-5
  assert _max_rel(g_chunk, g_all) <= 2e-5


def test_chunked_inner_gradient_check_grads_order2():
  with jax.enable_x64(True):
    spec = SPEC.replace(view_chunk=3)
    frozen, mspec, ep, meta = _setup(jnp.float64, spec)
    loss = jax.jit(lambda m: metatpt.outer_loss(frozen, m, ep, spec, mspec))
    check_grads(loss, (meta,), order=2, modes=("rev",), atol=1e-5, rtol=1e-5, eps=FD_EPS)


def test_first_order_is_unchanged_by_chunks():
  with jax.enable_x64(True):
    first = SPEC.replace(order="first")
    _, g_all = _meta_grad(first, jnp.float64)
    _, g_chunk = _meta_grad(first.replace(view_chunk=4), jnp.float64)
    assert _max_rel(g_chunk, g_all) <= 1e-9


def test_per_view_terms_average_to_the_aux_loss():
  logits = jax.random.normal(jax.random.key(0), (6, 5)) * 3
  feats = jax.random.normal(jax.random.key(1), (6, 4))
  for name, objective in losses.INNER_OBJECTIVES.items():
    if not objective.is_per_view:
      continue
    terms = objective.per_view(logits[1:], feats[1:], logits[0], feats[0])
    assert terms.shape == (5,), name
    np.testing.assert_allclose(jnp.mean(terms), objective.views_term(logits, feats), rtol=1e-6)


def test_marginal_entropy_cannot_be_chunked():
  # Refused when the spec is made (it is not a mean of per-view terms), before any tracing.
  with pytest.raises(UserError, match="mean of per-view terms"):
    SPEC.replace(aux_loss="marginal_entropy", view_chunk=3)


def test_view_chunk_is_not_part_of_a_records_fingerprint():
  # Like rematerialisation it splits the work, not the result: records stay the setting's.
  setting = lambda spec: dict(method=dict(kind="metatpt", spec=fp_lib.result_fields(spec)))
  assert fp_lib.fingerprint(setting(SPEC)) == fp_lib.fingerprint(
      setting(SPEC.replace(view_chunk=7)))
  assert fp_lib.fingerprint(setting(SPEC)) != fp_lib.fingerprint(
      setting(SPEC.replace(inner_lr=0.4)))


@pytest.mark.parametrize("fields, match", [
    (dict(view_chunk=-1), "view_chunk=-1"),
    (dict(view_chunk=4, aux_loss="marginal_entropy"), "mean of per-view terms")])
def test_benchmark_rejects_bad_view_chunks_before_running(fields, match):
  from metatpt_jax.bench import defaults, methods
  with pytest.raises(UserError, match=match):
    methods.method_spec(defaults.metatpt_method(**fields))

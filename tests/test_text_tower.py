"""The lean text tower is exact: prompts cut at the last EOT, the shared prefix computed once,
classes in chunks -- all equal to every class's whole 77-token prompt through the plain tower."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metatpt_jax import prompts
from metatpt_jax.clip import model as clip_model
from metatpt_jax.clip.tokenizer import default_tokenizer
from tests import method_helpers as h

# Names of 1 to 6 BPE tokens, so prompts end at different positions and chunks pad.
NAMES = ["cat", "dog", "sea lion", "T-shirt", "ankle boot", "great white shark",
         "Chesapeake Bay retriever"]
# fp32: the lean tower splits the attention softmax and sums in other orders; measured max abs
# error 3.4e-7 on unit-norm features (tiny CLIP, 7 classes); the bound leaves ~30x headroom.
FP32_ATOL = 1e-5


def _full_length_features(params, arch, ctx, n_ctx=4):
  """Every class's whole prompt (all context_length positions) through `model`'s plain tower."""
  texts = [" ".join(["X"] * n_ctx) + f" {name}." for name in NAMES]
  ids = jnp.asarray(default_tokenizer()(texts, context_length=arch.text.context_length))
  emb = clip_model.embed_tokens(params, ids)
  emb = emb.at[:, 1:1 + n_ctx].set(jnp.broadcast_to(ctx, (len(NAMES),) + ctx.shape))
  feats = clip_model.encode_text_embeddings(params, emb, clip_model.eot_positions(ids), arch,
                                            dtype=ctx.dtype)
  return clip_model.normalize(feats)


def _setup(dtype):
  frozen, mspec = h.tiny_frozen(dtype=dtype)
  bank = prompts.build_prompt_bank(frozen.params, mspec.arch, NAMES, n_ctx=4)
  ctx = frozen.ctx_init + 0.1 * jax.random.normal(jax.random.key(0), frozen.ctx_init.shape,
                                                  dtype)
  return frozen.params, mspec.arch, bank, ctx


def test_prompt_bank_stops_at_the_last_eot():
  params, arch, bank, _ = _setup(jnp.float32)
  length = 1 + 4 + bank.suffix.shape[1]
  assert length == int(bank.eot_indices.max()) + 1
  assert length < arch.text.context_length  # something was cut


@pytest.mark.parametrize("class_chunk", [0, 3, 7])
def test_lean_features_equal_full_length_float64(class_chunk):
  with jax.enable_x64(True):
    params, arch, bank, ctx = _setup(jnp.float64)
    ours = prompts.text_features(params, arch, bank, ctx, dtype=jnp.float64,
                                 class_chunk=class_chunk)
    full = _full_length_features(params, arch, ctx)
    assert ours.shape == (len(NAMES), arch.embed_dim)
    np.testing.assert_allclose(ours, full, atol=1e-12)


def test_lean_features_equal_full_length_float32():
  params, arch, bank, ctx = _setup(jnp.float32)
  ours = jax.jit(lambda c: prompts.text_features(params, arch, bank, c))(ctx)
  full = jax.jit(lambda c: _full_length_features(params, arch, c))(ctx)
  err = float(jnp.abs(ours - full).max())
  print(f"lean vs full-length text features: max abs error {err:.1e}")
  assert err <= FP32_ATOL


@pytest.mark.parametrize("class_chunk", [0, 2])
def test_context_gradient_equals_full_length_float64(class_chunk):
  with jax.enable_x64(True):
    params, arch, bank, ctx = _setup(jnp.float64)
    w = jax.random.normal(jax.random.key(1), (len(NAMES), arch.embed_dim), jnp.float64)
    ours = jax.grad(lambda c: jnp.sum(w * prompts.text_features(
        params, arch, bank, c, dtype=jnp.float64, class_chunk=class_chunk)))(ctx)
    full = jax.grad(lambda c: jnp.sum(w * _full_length_features(params, arch, c)))(ctx)
    assert float(jnp.abs(full).max()) > 1e-3  # the context reaches the features
    np.testing.assert_allclose(ours, full, atol=1e-12)

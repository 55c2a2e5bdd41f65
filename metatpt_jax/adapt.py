"""Batched test-time adaptation steps: `(state, batch, key) -> (state, metrics)`, for every
method of the registry (`registry.names()`), chosen by its kind.

Episodic methods (a per-sample `adapt_one`: zero-shot, TPT, MetaTPT, C-TPT, ZERO, MTA) have no
batch axis; here `jax.vmap` adds it, and with a mesh `jax.shard_map` splits the batch over the
data axis while the state stays replicated; they return the state unchanged (every sample starts
afresh). Each sample's key is `fold_in(key, sample_index)`, so its result does not depend on
which other samples share its batch, their order, or the device it lands on. Online methods (a
`stream`: TDA, and MetaTPT with generator_memory="stream"; `registry.Method.is_online`) change
the state from sample to sample: the step scans the batch in order on one device and returns
the state carried past it.

A batch is a dict: "image" [B, S, S, 3] float in [0, 1] (view 0, as CLIP sees the image),
"index" [B] int, and optionally the decoded images the random views are cut from: "canvas"
[B, M, N, 3] (uint8 or float in [0, 1], the image at the top-left) with "extent" [B, 2] int
(each image's height, width). Without them the views are cut from "image".
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from metatpt_jax import registry, views
from metatpt_jax.errors import UserError
from metatpt_jax.frozen_clip import FrozenCLIP, ModelSpec
from metatpt_jax.image_ops import check_images
from metatpt_jax.sharding import DATA_AXIS


class AdaptState(NamedTuple):
  """What a step reads: the frozen CLIP and the method's per-domain state."""
  frozen: FrozenCLIP
  # `registry.Method.init_state` or `model_state`: MetaTPT's generator parameters phi (what
  # every sample starts from; with its AdamW state, carried along a stream), TDA's caches
  # (carried), the ensemble classifier of zero_shot_ensemble; None for the other methods.
  method_state: Any = None


def per_sample_fn(kind: str, spec, mspec: ModelSpec):
  """fn(state, image, key, source) -> (logits [C], metrics) for one sample of method `kind`."""
  adapt_one = registry.get(kind).adapt_one
  return lambda state, image, key, source=None: adapt_one(state.frozen, state.method_state,
                                                          image, key, spec, mspec, source)


def _keys_and_sources(batch: dict, key: jax.Array):
  """Each sample's key (folded from its index) and the views' sources (None: the images)."""
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(batch["index"])
  sources = None
  if "canvas" in batch:
    canvas = batch["canvas"]
    if jnp.issubdtype(canvas.dtype, jnp.integer):
      canvas = canvas.astype(batch["image"].dtype) / 255
    sources = views.Source(canvas.astype(batch["image"].dtype),
                           jnp.asarray(batch["extent"], jnp.int32))
  return keys, sources


def adapt_batch(state: AdaptState, batch: dict, key: jax.Array, *, kind: str, spec,
                mspec: ModelSpec):
  """vmap of the per-sample method over batch["image"] [B, S, S, 3] with batch["index"] [B]."""
  fn = per_sample_fn(kind, spec, mspec)
  keys, sources = _keys_and_sources(batch, key)
  out, metrics = jax.vmap(fn, in_axes=(None, 0, 0, 0))(state, batch["image"], keys, sources)
  return dict(metrics, logits=out, prediction=jnp.argmax(out, -1))


def stream_batch(state: AdaptState, batch: dict, key: jax.Array, *, kind: str, spec,
                 mspec: ModelSpec):
  """An online method over the batch's samples in order: (state carried past them, metrics)."""
  keys, sources = _keys_and_sources(batch, key)
  carried, out, metrics = registry.get(kind).stream(state.frozen, state.method_state,
                                                    batch["image"], keys, spec, mspec, sources)
  return (state._replace(method_state=carried),
          dict(metrics, logits=out, prediction=jnp.argmax(out, -1)))


def _stream_step(kind, spec, mspec, mesh):
  if mesh is not None and mesh.size > 1:
    raise UserError(f"{kind} carries its state from sample to sample: it runs as one stream "
                    f"on one device, not split over {mesh.size}; use --config.num_devices=1.")
  return functools.partial(stream_batch, kind=kind, spec=spec, mspec=mspec)


def make_step(kind: str, spec, mspec: ModelSpec, mesh: jax.sharding.Mesh | None = None):
  """A jitted `(state, batch, key) -> (state, metrics)` step of method `kind` (a registry name).

  With `mesh`, the batch axis of every batch entry is split over `DATA_AXIS` (the batch size
  must be a multiple of the axis size) and the state is replicated. Episodic methods return
  the state unchanged; online ones (`registry.Method.is_online`) return it carried past the
  batch.
  """
  if registry.get(kind).is_online(spec):  # online: the state carries (an unknown fails)
    return _checked(jax.jit(_stream_step(kind, spec, mspec, mesh)), mspec)
  fn = functools.partial(adapt_batch, kind=kind, spec=spec, mspec=mspec)
  if mesh is not None:
    per_device = fn

    def fn(state, batch, key):
      # The replicated state must enter as device-varying: otherwise shard_map treats the
      # context as one value shared by all devices and transposes each per-sample gradient
      # into a psum over the data axis, mixing samples' updates.
      state = jax.tree.map(lambda x: jax.lax.pcast(x, DATA_AXIS, to="varying"), state)
      return per_device(state, batch, key)

    fn = jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P()), out_specs=P(DATA_AXIS))

  def step(state, batch, key):
    # Episodic methods leave the state as it was: every sample starts from the same prompt.
    return state, fn(state, batch, key)

  return _checked(jax.jit(step), mspec)


def _checked(jitted, mspec: ModelSpec):
  """`jitted` behind the host-side image check; `.jitted` is the raw jitted step."""
  @functools.wraps(jitted)
  def checked_step(state, batch, key):
    # Malformed or NaN/Inf images fail here, on the host, before anything is compiled or run.
    check_images(batch["image"], mspec.arch.vision.image_size, batched=True)
    return jitted(state, batch, key)

  checked_step.jitted = jitted  # the raw jitted step (for tracing, lowering, cache inspection)
  return checked_step

"""The method registry: everything the library, the benchmarks and the configs know of a method.

Adding a method is one `register(Method(...))` call here (with its per-sample function and spec
type in their own module): `adapt.make_step`, `metatpt-bench` (config -> spec, per-domain setup,
record fingerprints, table order), `metatpt-throughput` and `bench.defaults.method_config` all
read this table and branch on no method name.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from metatpt_jax import generator as gen
from metatpt_jax import metatpt, offline_generator, tda, tpt, training_free, views
from metatpt_jax.errors import UserError
from metatpt_jax.frozen_clip import ModelSpec, class_features, encode_images, logits
from metatpt_jax.specs import Spec


@dataclasses.dataclass(frozen=True)
class Method:
  """One test-time method.

  adapt_one(state, image [S, S, 3], key, spec, mspec, source | None) -> (logits [C], metrics):
    the per-sample function (no batch axis; `adapt` vmaps and shards it). `state` is an
    `adapt.AdaptState`: the frozen CLIP, prompt bank and initial context, and `phi`.
  spec_type: the method's `specs.Spec` (None: no hyper-parameters).
  init_phi(key, spec, arch, num_classes) -> the per-domain starting state kept in
    `AdaptState.phi` (MetaTPT: the augmentation generator; TDA: its empty caches), or None.
  stream(state, images [B, S, S, 3], keys [B], spec, mspec, sources | None) -> (phi, logits
    [B, C], metrics): set for online methods (TDA), whose state carries from sample to sample;
    they have no per-sample `adapt_one`, and `adapt.make_step` scans the batch in order.
  offline_images(spec, method_config) -> how many unlabeled images of a domain the method reads
    before its test stream (0: none). Recorded in each benchmark cell's setting when > 0.
  prepare(state, spec, mspec, images [T, S, S, 3], sources | None, key) -> state: the per-domain
    setup on those images (MetaTPT's offline generator fit). Called only when offline_images > 0.
  config_fields: method-config keys that are not spec fields (read by offline_images).
  view_pairs(spec) -> fn(frozen, phi, image, key, spec, mspec, source) -> (before, after) views
    for the benchmark's figure, or None when the spec has no learned views to show.
  """
  name: str
  adapt_one: Callable | None
  spec_type: type[Spec] | None = None
  init_phi: Callable | None = None
  stream: Callable | None = None
  offline_images: Callable[[Any, Any], int] = lambda spec, method_cfg: 0
  prepare: Callable | None = None
  config_fields: dict = dataclasses.field(default_factory=dict)
  view_pairs: Callable[[Any], Callable | None] = lambda spec: None


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
  if method.name in METHODS:
    raise ValueError(f"Method {method.name!r} is registered twice.")
  METHODS[method.name] = method
  return method


def get(name: str) -> Method:
  if name not in METHODS:
    raise UserError(f"Method kind {name!r} unknown; choose one of {tuple(METHODS)}.")
  return METHODS[name]


def names() -> tuple[str, ...]:
  """Registered method kinds, in registration order (the order of the benchmark's tables)."""
  return tuple(METHODS)


# ------------------------------------------------------------------ zero-shot
def zero_shot_one_sample(state, image, key, spec, mspec: ModelSpec, source=None):
  """CLIP with the initial prompt on the image itself: [S, S, 3] -> logits [C]."""
  del key, spec, source
  frozen = state.frozen
  feats = encode_images(frozen, image[None], mspec)
  return logits(frozen, feats, class_features(frozen, frozen.ctx_init, mspec))[0], {}


register(Method("zero_shot", zero_shot_one_sample))


# ------------------------------------------------------------------ TPT
def tpt_one_sample(state, image, key, spec, mspec, source=None):
  return tpt.tpt_adapt_one_sample(state.frozen, image, key, spec, mspec, source)


register(Method("tpt", tpt_one_sample, spec_type=tpt.TPTSpec))


# ------------------------------------------------------------------ MetaTPT and its ablations
def metatpt_one_sample(state, image, key, spec, mspec, source=None):
  out, metrics = metatpt.metatpt_adapt_one_sample(state.frozen, state.phi, image, key, spec,
                                                  mspec, source)
  metrics = dict(metrics)
  metrics.pop("phi")  # per-sample generators are not returned (memory); the loss is
  return out, metrics


def _init_generator(key, spec, arch, num_classes):
  del num_classes
  return gen.init_generator(key, spec.generator, arch.embed_dim)


# Module-level jitted wrappers: one compilation cache for every domain and seed of a run.
_FIT_OFFLINE = jax.jit(offline_generator.fit_offline_generator, static_argnums=(4, 5))
_VIEWS_BEFORE_AFTER = jax.jit(metatpt.views_before_and_after_inner, static_argnums=(4, 5))


def _fit_offline(state, spec, mspec, images, sources: views.Source | None, key):
  """augment="frozen": phi learned across the domain's first unlabeled images, then frozen."""
  phi, _ = _FIT_OFFLINE(state.frozen, state.phi, images, key, spec, mspec, sources)
  return state._replace(phi=phi)


register(Method(
    "metatpt", metatpt_one_sample, spec_type=metatpt.MetaTPTSpec, init_phi=_init_generator,
    offline_images=lambda spec, mcfg: int(mcfg.offline_images) if spec.augment == "frozen" else 0,
    prepare=_fit_offline,
    config_fields={"offline_images": 64},  # images the offline generator is fitted on
    view_pairs=lambda spec: _VIEWS_BEFORE_AFTER if spec.augment == "learned" else None))


# ------------------------------------------------------------------ the field's baselines
register(Method("ctpt", tpt_one_sample, spec_type=tpt.CTPTSpec))   # TPT + text dispersion


def zero_one_sample(state, image, key, spec, mspec, source=None):
  return training_free.zero_one_sample(state.frozen, image, key, spec, mspec, source)


register(Method("zero", zero_one_sample, spec_type=training_free.ZeroSpec))


def mta_one_sample(state, image, key, spec, mspec, source=None):
  return training_free.mta_one_sample(state.frozen, image, key, spec, mspec, source)


register(Method("mta", mta_one_sample, spec_type=training_free.MTASpec))


def tda_stream(state, images, keys, spec, mspec, sources=None):
  cache, final, clip_logits = tda.tda_stream(state.phi, state.frozen, images, keys, spec, mspec,
                                             sources)
  return cache, final, dict(zero_shot_logits=clip_logits)


def _init_tda(key, spec, arch, num_classes):
  del key
  return tda.init_cache(num_classes, arch.embed_dim, spec)


register(Method("tda", None, spec_type=tda.TDASpec, init_phi=_init_tda, stream=tda_stream))

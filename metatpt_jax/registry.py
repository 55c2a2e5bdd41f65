"""The method registry: the table of test-time methods and the protocol each one follows.

A method is one module that registers itself: it defines its per-sample (or stream) function and
its `specs.Spec` (whose `code_path` declares which fields select code), and ends with
`registry.register(registry.Method(...))`. `adapt.make_step`, `metatpt-bench` (config -> spec,
per-domain setup, record fingerprints, table order), `metatpt-throughput`, `bench.defaults`
(every config's method tables) and the tests read this table and branch on no method name.

The built-in methods register when `metatpt_jax.builtin_methods` is imported, which the lookups
here do first. A method of your own registers when its module is imported: import it before
the lookup (a config file that names it can import it).
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable
from typing import Any, Literal

from metatpt_jax.errors import UserError
from metatpt_jax.specs import Spec


@dataclasses.dataclass(frozen=True)
class Method:
  """One test-time method.

  adapt_one(frozen, method_state, image [S, S, 3], key, spec, mspec, source | None) ->
    (logits [C], metrics): the per-sample function (no batch axis; `adapt` vmaps and shards
    it). `frozen`: the `FrozenCLIP` (parameters, prompt bank, initial context); `method_state`:
    the method's per-domain state (`model_state` or `init_state`), the same for every sample.
  spec_type: the method's `specs.Spec` (None: no hyper-parameters).
  init_state(key, spec, arch, num_classes) -> the per-domain starting state kept in
    `AdaptState.method_state` (MetaTPT: the augmentation generator's parameters phi; TDA: its
    empty caches), or None.
  stream(frozen, method_state, images [B, S, S, 3], keys [B], spec, mspec, sources | None) ->
    (method_state, logits [B, C], metrics): set for online methods (TDA), whose state carries
    from sample to sample; `adapt.make_step` scans the batch.
  online(spec) -> whether this spec runs as a stream: needed when a method has both adapt_one
    and stream (MetaTPT: episodic, or online with a generator that persists along the stream);
    otherwise a method is online exactly when it has only `stream`.
  group: which of the benchmark's method tables it belongs to: "main" (zero-shot, TPT,
    MetaTPT: `bench.defaults.all_methods`), "baseline" (`bench.defaults.baselines`) or
    "reference" (in no default table; a config names it: zero-shot with a prompt ensemble).
  model_state(params, arch, class_names, spec) -> a per-domain state built from the model and
    the class names (the ensemble's classifier), used instead of `init_state`.
  variants: named ablations, name -> spec-field overrides (each a row of `all_methods`).
  offline_images(spec, method_config) -> how many unlabeled images of a domain the method reads
    before its test stream (0: none). Recorded in each benchmark cell's setting when > 0.
  prepare(state, spec, mspec, images [T, S, S, 3], sources | None, key) -> state: the per-domain
    setup on those images (MetaTPT's offline generator fit). Called only when offline_images > 0.
  config_fields: method-config keys that are not spec fields (read by offline_images).
  view_pairs(spec) -> fn(frozen, method_state, image, key, spec, mspec, source) -> (before,
    after) views for the benchmark's figure, or None when the spec has no learned views.
  """
  name: str
  adapt_one: Callable | None
  spec_type: type[Spec] | None = None
  init_state: Callable | None = None
  stream: Callable | None = None
  group: Literal["main", "baseline"] = "main"
  variants: dict = dataclasses.field(default_factory=dict)
  offline_images: Callable[[Any, Any], int] = lambda spec, method_cfg: 0
  prepare: Callable | None = None
  config_fields: dict = dataclasses.field(default_factory=dict)
  view_pairs: Callable[[Any], Callable | None] = lambda spec: None
  online: Callable[[Any], bool] | None = None
  model_state: Callable | None = None

  def __post_init__(self):
    if self.group not in GROUPS:
      raise UserError(f"Method {self.name!r}: group={self.group!r}; choose one of {GROUPS}.")
    if self.adapt_one is None and self.stream is None:
      raise UserError(f"Method {self.name!r} needs adapt_one (episodic), stream (online) or "
                      "both.")
    if self.adapt_one is not None and self.stream is not None and self.online is None:
      raise UserError(f"Method {self.name!r} has both adapt_one and stream: give online(spec) "
                      "to say which a spec runs.")
    if self.online is not None and (self.adapt_one is None or self.stream is None):
      raise UserError(f"Method {self.name!r}: online(spec) chooses between adapt_one and stream; "
                      "give both, or neither online.")
    if self.stream is not None and self.init_state is None and self.model_state is None:
      raise UserError(f"Online method {self.name!r} needs init_state: the state its stream "
                      "starts from.")


  def is_online(self, spec) -> bool:
    """Whether `spec` runs as one stream whose state carries from sample to sample."""
    if self.online is not None:
      return bool(self.online(spec))
    return self.stream is not None


GROUPS = ("main", "baseline", "reference")


def stateless(fn: Callable) -> Callable:
  """`adapt_one` of a method without per-domain state, from fn(frozen, image, key, spec, mspec,
  source) -> (logits, metrics)."""
  def adapt_one(frozen, method_state, image, key, spec, mspec, source=None):
    del method_state
    return fn(frozen, image, key, spec, mspec, source)
  return adapt_one


METHODS: dict[str, Method] = {}
_REGISTERED_BY: dict[str, str] = {}  # kind -> the module that registered it


def register(method: Method, module: str | None = None) -> Method:
  """Adds `method` to the table, as registered by `module` (default: the calling module; its
  place in `builtin_methods.MODULES` orders the tables). The same module registering the same
  name again (a reloaded module) replaces the entry; another module's is refused."""
  module = module or inspect.currentframe().f_back.f_globals.get("__name__", "")
  if method.name in METHODS and _REGISTERED_BY[method.name] != module:
    raise UserError(f"Method {method.name!r} is registered by {_REGISTERED_BY[method.name]}; "
                    f"{module} cannot register another under that name.")
  METHODS[method.name] = method
  _REGISTERED_BY[method.name] = module
  return method


def _load_builtins():
  """The `builtin_methods` module (importing it registers every built-in method)."""
  return importlib.import_module("metatpt_jax.builtin_methods")


def get(name: str) -> Method:
  _load_builtins()
  if name not in METHODS:
    raise UserError(f"Method kind {name!r} unknown; choose one of {tuple(METHODS)} (a method "
                    "of your own registers when its module is imported).")
  return METHODS[name]


def names(group: str | None = None) -> tuple[str, ...]:
  """Registered method kinds (of `group`, if given) in table order: the built-in ones in the
  order of `builtin_methods.MODULES` (whichever module a program imported first), then the
  others in registration order."""
  modules = _load_builtins().MODULES
  rank = lambda kind: (modules.index(_REGISTERED_BY[kind]) if _REGISTERED_BY[kind] in modules
                       else len(modules))
  ordered = sorted(METHODS, key=rank)  # stable: registration order within a module
  return tuple(name for name in ordered if group is None or METHODS[name].group == group)

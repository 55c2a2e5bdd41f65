"""Method configs with TPT's published defaults, for configs/*.py to compose.

Every method config is `kind` (a `registry` name) plus its spec type's fields (all of them,
defaults included, so a config file shows every setting) and the method's `config_fields`;
`bench.methods.method_spec` turns it back into the spec, which validates itself.
"""
from __future__ import annotations

import ml_collections

from metatpt_jax import registry


def _plain(value):
  """Nested specs as ConfigDicts (overridable field by field from the command line)."""
  if hasattr(value, "_asdict"):
    return ml_collections.ConfigDict(value._asdict())
  return value


def method_config(kind: str, **overrides) -> ml_collections.ConfigDict:
  """The config of method `kind` at its spec's defaults, with `overrides` applied."""
  method = registry.get(kind)
  fields = {} if method.spec_type is None else method.spec_type().fields_dict()
  c = ml_collections.ConfigDict(dict(kind=kind, **method.config_fields,
                                     **{k: _plain(v) for k, v in fields.items()}))
  c.update(overrides)
  return c


def tpt_method(**overrides) -> ml_collections.ConfigDict:
  """TPT exactly as its public implementation: 64 views, 10% kept, 1 AdamW step at 5e-3."""
  return method_config("tpt", **overrides)


def metatpt_method(**overrides) -> ml_collections.ConfigDict:
  """MetaTPT as docs/METHOD.md describes it (learned views, dual loop, second order)."""
  return method_config("metatpt", **overrides)


def _with_variants(kinds, overrides_by_kind) -> ml_collections.ConfigDict:
  """Each kind's config (with its overrides) and its registered variants (`Method.variants`)."""
  out = {}
  for kind in kinds:
    extra = overrides_by_kind.get(kind, {})
    out[kind] = method_config(kind, **extra)
    for name, changes in registry.get(kind).variants.items():
      out[name] = method_config(kind, **{**extra, **changes})
  return ml_collections.ConfigDict(out)


def all_methods(**overrides_by_kind) -> ml_collections.ConfigDict:
  """The main methods (zero-shot, TPT, MetaTPT: `registry.names("main")`) and each one's
  ablations (`Method.variants`); overrides_by_kind: kind -> field overrides for its rows."""
  return _with_variants(registry.names("main"), overrides_by_kind)


def baselines(**overrides_by_kind) -> ml_collections.ConfigDict:
  """The field's test-time baselines at their authors' defaults (`registry.names("baseline")`:
  C-TPT, ZERO, MTA, TDA) and their variants."""
  return _with_variants(registry.names("baseline"), overrides_by_kind)


def prompt_config(n_ctx: int = 4, init: str = "a photo of a") -> dict:
  """The prompt: CLIP's context (n_ctx vectors from the words `init`, or a saved CoOp context
  file), or a prompt backbone: `backbone` "maple" / "mmrl" with the fields of its section,
  `backbone_checkpoint` its Dassl file ("" : the backbone's own random init, for training) and
  `adapt` the prompt tensors test-time methods tune (() : the backbone's default)."""
  return dict(n_ctx=n_ctx, init=init, backbone="", backbone_checkpoint="", adapt=(),
              maple=dict(depth=3, n_ctx=2, ctx_init="a photo of a", template="{}."),
              mmrl=dict(n_tokens=5, rep_dim=512, rep_layers=tuple(range(6, 13)), alpha=1.0,
                        template="a photo of a {}."))


# The prompt backbones sized for world v3's CLIP (checkpoints/small_clip_v3: 4 text and 6 image
# layers, text width 128), shared by its training (configs/prompt_train.py) and its benchmark
# (configs/bench_v3.py): MaPLe depth 3 with 2 context tokens from "an emoji" of the pretraining
# caption "an emoji of {}."; MMRL's 5 tokens of width 128 in the upper half of the text tower
# (layers 3-4 of both towers, as 6-12 is the upper half of ViT-B/16's 12), class-token logits.
V3_BACKBONES = {
    "maple": dict(depth=3, n_ctx=2, ctx_init="an emoji of"),
    "mmrl": dict(n_tokens=5, rep_dim=128, rep_layers=(3, 4), alpha=1.0,
                 template="an emoji of {}."),
}


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # class_chunk: the text tower over this many classes at a time (0: all; bounds memory at 1000)
  # matmul_precision: jax.default_matmul_precision for the run ("default": the platform's own;
  # on TPU that runs float32 matmuls in bf16 passes, "highest" in full float32).
  c.model = dict(checkpoint="checkpoints/small_clip", compute_dtype="float32", remat=False,
                 class_chunk=0, matmul_precision="default")
  c.prompt = prompt_config()
  # canvas_size: paper datasets keep each decoded image (aspect kept, longer side at most this
  # many pixels) for TPT's random crops, as the public code crops the full image; 0 crops from
  # the centre square. The in-memory shifted domains are square: their crops need no canvas.
  c.data = dict(domains=("fashion_mnist:clean",), num_images=500, split="test",
                cache_dir="runs/domain_cache", canvas_size=512)
  c.seeds = (0, 1, 2)  # tuples: overridable as --config.seeds="(0,)"
  c.batch_size = 8  # per step, rounded up to a multiple of the device count
  c.num_devices = 0  # 0: every local device; n: the first n
  c.methods = all_methods()
  c.output_dir = "runs/bench"
  c.progress_bar = True
  c.plot_views = True
  return c

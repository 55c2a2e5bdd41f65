"""Few-shot training of the prompt backbones on world v3's source styles (issue 26).

    metatpt-train-prompt --config configs/prompt_train.py:coop
    metatpt-train-prompt --config configs/prompt_train.py:maple
    metatpt-train-prompt --config configs/prompt_train.py:mmrl

CLIP is checkpoints/small_clip_v3 (frozen). The training set is the source styles' pictures (the
styles CLIP was pretrained on) of the 200 test-split classes that world v3's test domains cover
(their M-way subsets are nested: 50 and 100 inside 200), labelled as the domains label them: the
domain-generalisation protocol of the paper's ImageNet -> ImageNet-A/-R/-Sketch rows, trained on
the source domain, tested on the shifted styles. Loss, optimiser and schedule are each authors'
cross-dataset settings (`backbones.train.AUTHORS`); the sizes follow small_clip_v3 (4 text and 6
image layers, text width 128): MaPLe depth 3 with 2 context tokens from "an emoji" of the
pretraining caption "an emoji of {}."; MMRL's 5 tokens of width 128 in the text tower's upper
half (layers 3-4 of both towers, as (6..12) is the upper half of ViT-B/16's 12).
"""
import ml_collections

from metatpt_jax.backbones.train import AUTHORS
from metatpt_jax.bench import defaults

BACKBONES = {
    "coop": {},  # the context alone: prompt.n_ctx vectors from prompt.init
    "maple": dict(depth=3, n_ctx=2, ctx_init="an emoji of"),
    "mmrl": dict(n_tokens=5, rep_dim=128, rep_layers=(3, 4), alpha=1.0,
                 template="an emoji of {}."),
}


def get_config(arg: str = "maple"):
  if arg not in BACKBONES:
    raise ValueError(f"Unknown backbone {arg!r}; valid: {', '.join(map(repr, BACKBONES))}.")
  c = ml_collections.ConfigDict()
  c.model = dict(checkpoint="checkpoints/small_clip_v3")
  c.prompt = defaults.prompt_config(n_ctx=3, init="an emoji of")
  if arg != "coop":
    c.prompt.backbone = arg
    c.prompt[arg].update(BACKBONES[arg])
  spec = AUTHORS[arg]
  c.train = {f: getattr(spec, f) for f in spec.__dataclass_fields__}
  c.data = dict(source="artwork_sources", split="test", num_classes=200, shots=0,
                cache_dir="")
  c.seed = 0
  c.workdir = f"runs/prompt_train_v3/{arg}"
  return c

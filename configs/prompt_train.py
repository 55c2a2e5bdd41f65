"""Few-shot training of the prompt backbones on world v3's source styles (issue 26).

    metatpt-train-prompt --config configs/prompt_train.py:coop
    metatpt-train-prompt --config configs/prompt_train.py:maple
    metatpt-train-prompt --config configs/prompt_train.py:mmrl

CLIP is checkpoints/small_clip_v3 (frozen). The training set is the source styles' pictures (the
styles CLIP was pretrained on) of the 200 test-split classes that world v3's test domains cover
(their M-way subsets are nested: 50 and 100 inside 200), at most 16 a class (CoOp's 16 shots; a
class has 4 to 84 with its skin tones), labelled as the domains label them: the
domain-generalisation protocol of the paper's ImageNet -> ImageNet-A/-R/-Sketch rows, trained on
the source domain, tested on the shifted styles. Loss, optimiser and schedule are each authors'
cross-dataset settings (`backbones.train.AUTHORS`); the sizes follow small_clip_v3
(`defaults.V3_BACKBONES`). The trained prompts are committed as checkpoints/prompts_v3/*.npz.
"""
import ml_collections

from metatpt_jax.backbones.train import AUTHORS
from metatpt_jax.bench import defaults

# coop: the context alone (prompt.n_ctx vectors from prompt.init); the others sized for
# small_clip_v3 (`defaults.V3_BACKBONES`).
BACKBONES = {"coop": {}, **defaults.V3_BACKBONES}


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
  c.data = dict(source="artwork_sources", split="test", num_classes=200, shots=16,
                cache_dir="")
  c.seed = 0
  c.workdir = f"runs/prompt_train_v3/{arg}"
  return c

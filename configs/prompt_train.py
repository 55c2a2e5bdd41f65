"""Few-shot training of the prompt backbones on world v3's source styles (issue 26).

    metatpt-train-prompt --config configs/prompt_train.py:coop
    metatpt-train-prompt --config configs/prompt_train.py:maple
    metatpt-train-prompt --config configs/prompt_train.py:mmrl
    metatpt-train-prompt --config configs/prompt_train.py:coop,authors_crops   # the authors' crops

CLIP is checkpoints/small_clip_v3 (frozen). The training set is the source styles' pictures (the
styles CLIP was pretrained on) of the 200 test-split classes that world v3's test domains cover
(their M-way subsets are nested: 50 and 100 inside 200), at most 16 a class (CoOp's 16 shots; a
class has 4 to 84 with its skin tones), labelled as the domains label them: the
domain-generalisation protocol of the paper's ImageNet -> ImageNet-A/-R/-Sketch rows, trained on
the source domain, tested on the shifted styles. Loss, optimiser and schedule are each authors'
cross-dataset settings (`backbones.train.AUTHORS`); the sizes follow small_clip_v3
(`defaults.V3_BACKBONES`). The trained prompts are committed as checkpoints/prompts_v3/*.npz.

One setting is not the authors': the random crops' scale range. Their (0.08, 1) was made for
224-px photographs; on 48-px icons a crop of 8 % of the area is about 14 px a side. It is chosen
per backbone on development data (CROP_SCALE below) from (0.08, 1), (0.5, 1) and (1, 1): the
highest mean zero-shot accuracy over the development domains of configs/bench_v3.py:dev
(tools/backbone_fit_v3.py; the held-out styles, as the test domains, but the development
split's classes, none of training's or test's). `<name>,authors_crops` trains with the authors'
crops (checkpoints/prompts_v3/authors_crops/).
"""
import ml_collections

from metatpt_jax.backbones.train import AUTHORS
from metatpt_jax.bench import defaults

# coop: the context alone (prompt.n_ctx vectors from prompt.init); the others sized for
# small_clip_v3 (`defaults.V3_BACKBONES`).
BACKBONES = {"coop": {}, **defaults.V3_BACKBONES}
# Chosen on the development domains (tools/backbone_fit_v3.py, mean zero-shot %, <= 60 images a
# domain; CLIP's own prompt: 34.6): CoOp 20.8 / 33.8 / 33.9 at scale 0.08 / 0.5 / 1; MaPLe 26.4 /
# 31.9 / 32.9; MMRL 28.1 / 32.1 / 31.4 (its authors' own 0.5 chosen).
CROP_SCALE = {"coop": (1.0, 1.0), "maple": (1.0, 1.0), "mmrl": (0.5, 1.0)}


def get_config(arg: str = "maple"):
  arg, _, recipe = arg.partition(",")
  if arg not in BACKBONES or recipe not in ("", "authors_crops"):
    raise ValueError(f"Unknown variant {','.join(filter(None, (arg, recipe)))!r}; valid: "
                     f"{', '.join(map(repr, BACKBONES))}, each optionally ',authors_crops'.")
  c = ml_collections.ConfigDict()
  c.model = dict(checkpoint="checkpoints/small_clip_v3")
  c.prompt = defaults.prompt_config(n_ctx=3, init="an emoji of")
  if arg != "coop":
    c.prompt.backbone = arg
    c.prompt[arg].update(BACKBONES[arg])
  spec = AUTHORS[arg]
  c.train = {f: getattr(spec, f) for f in spec.__dataclass_fields__}
  if not recipe:
    c.train.crop_scale = CROP_SCALE[arg]
  c.data = dict(source="artwork_sources", split="test", num_classes=200, shots=16,
                cache_dir="")
  c.seed = 0
  c.workdir = f"runs/prompt_train_v3/{arg}" + (f"_{recipe}" if recipe else "")
  return c

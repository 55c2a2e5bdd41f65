"""The paper's benchmarks with CLIP ViT-B/16: one config per dataset x method.

    metatpt-bench --config configs/paper.py:imagenet_a,tpt
    metatpt-bench --config configs/paper.py:dtd,metatpt
    metatpt-bench --config configs/paper.py:ucf101,main \
        --config.data.domains="('paper:ucf101:/data/ucf101_midframes_test',)"

The argument is "<dataset>,<method>[,<policy>][,<backbone>]" (policy: fp32, the default; fp16 as
the authors run on CUDA; gpu or tpu for bf16 on accelerators; `POLICIES`. backbone: clip, the
default; coop, maple or mmrl from the released ImageNet checkpoints, `BACKBONE_FILES`). Datasets: the keys of `benchmarks.BENCHMARKS`. Methods:
zero_shot, tpt, metatpt and the ablations metatpt_first_order, metatpt_joint, metatpt_fixed_aug,
metatpt_offline, the baselines (ctpt, zero, mta, tda) and zero_shot_ensemble (CLIP's 80
templates); "main" runs zero_shot, tpt and metatpt in one go, "baselines" the baselines beside
zero_shot and tpt, "all" every one of them.

TPT's published defaults: ViT-B/16 at 224 px, 64 views, the 10% most confident kept, 1 AdamW
step at lr 5e-3, context "a photo of a" (n_ctx 4), one image per step (batch 1), random resized
crops for the ImageNet sets and AugMix views for the cross-datasets. MetaTPT uses the defaults of
docs/METHOD.md (MetaTPT) on top. Data: tfds datasets from $METATPT_DATA_DIR (default
~/tensorflow_datasets; `--config.data.data_dir`), image-folder sets from
$METATPT_DATA_DIR/folders/<dataset> unless `data.domains` names another folder.
"""
import os

from metatpt_jax import registry, specs, zero_shot
from metatpt_jax.bench import defaults
from metatpt_jax.bench import methods as bench_methods
from metatpt_jax.clip import hub
from metatpt_jax.data import benchmarks, tfds_builders

VIEW_CHUNK = 8
# Every registered method and its variants (registry order); "main": the main methods;
# "baselines": the field's baselines beside the two references they are read against.
METHODS = tuple(name for kind in registry.names()
                for name in (kind, *registry.get(kind).variants))
GROUPS = {"main": registry.names("main"),
          "baselines": ("zero_shot", "tpt", *registry.names("baseline")), "all": METHODS}
# TDA as its authors run each dataset (kdiAAA/TDA): the positive cache's (alpha, beta) from
# their configs/<dataset>.yaml (the negative cache is the same everywhere); their text
# classifier from their datasets/<dataset>.py templates (TDA_TEMPLATE_SETS: CLIP's 7 templates
# for ImageNet, -A, -V2, Caltech101, Cars and SUN397, CLIP's 80 for -R and -Sketch, CoOp's
# single template of the class-name file elsewhere); and on ImageNet-A/-V2/-R/-Sketch the image
# and 63 AugMix views, the 6 most confident averaged (their get_ood_preprocess), elsewhere the
# image alone.
TDA_POSITIVE = {"imagenet": (2.0, 5.0), "imagenet_a": (2.0, 5.0), "imagenet_v2": (1.0, 8.0),
                "imagenet_r": (1.0, 8.0), "imagenet_sketch": (2.363, 7.45),
                "caltech101": (5.0, 5.0), "dtd": (2.0, 3.0), "eurosat": (4.0, 8.0),
                "fgvc_aircraft": (2.0, 2.0), "food101": (1.0, 1.0), "oxford_flowers": (1.0, 5.0),
                "oxford_pets": (2.0, 7.0), "stanford_cars": (1.0, 7.0), "sun397": (2.0, 3.0),
                "ucf101": (3.0, 8.0)}
TDA_VIEWS = {"imagenet_a": 64, "imagenet_v2": 64, "imagenet_r": 64, "imagenet_sketch": 64}
TDA_TEMPLATE_SETS = {**dict.fromkeys(("imagenet", "imagenet_a", "imagenet_v2", "caltech101",
                                      "stanford_cars", "sun397"), "clip7"),
                     "imagenet_r": "clip", "imagenet_sketch": "clip"}


def tda_templates(bench: benchmarks.Benchmark) -> tuple[str, ...]:
  """The templates of TDA's text classifier on `bench` (a `zero_shot.TEMPLATE_SETS` name, or
  the class-name file's CoOp template)."""
  name = TDA_TEMPLATE_SETS.get(bench.name)
  if name:
    return tuple(zero_shot.TEMPLATE_SETS[name]())
  return tuple(benchmarks.load_classes(bench.name)["templates"]["coop"])
# C-TPT's authors: dispersion weight 20 and AugMix views on ImageNet-A/-V2/-R/-Sketch, 50 (and
# TPT's views) elsewhere.
CTPT_IMAGENET_VARIANTS = ("imagenet_a", "imagenet_v2", "imagenet_r", "imagenet_sketch")


# Numeric policies (the optional third part of the argument), each with its compute dtype (the
# matmul inputs; weights, norms, softmax and outputs stay float32) and matmul precision explicit:
# "fp32" (the default): float32 at full precision, the reference every test checks.
# "fp16": as the authors run on CUDA: fp32 weights under autocast (fp16 matmul inputs), and
#   ZERO's "zero temperature" the fp16 epsilon 2**-10, a soft vote.
# "gpu": bf16 matmul inputs, the remaining float32 matmuls in TF32 (Ampere and later).
# "tpu": bf16 matmul inputs, the platform's default precision (bf16 passes on TPU).
POLICIES = {
    "fp32": dict(compute_dtype="float32", matmul_precision="highest", zero_temperature=0.0),
    "fp16": dict(compute_dtype="float16", matmul_precision="highest",
                 zero_temperature=2.0 ** -10),
    "gpu": dict(compute_dtype="bfloat16", matmul_precision="tensorfloat32", zero_temperature=0.0),
    "tpu": dict(compute_dtype="bfloat16", matmul_precision="default", zero_temperature=0.0)}


# Prompt backbones on the paper's datasets: each authors' released ImageNet (16-shot, ViT-B/16)
# prompt learner, read from $METATPT_DATA_DIR/<file> (download it from their pages; or give
# --config.prompt.init / --config.prompt.backbone_checkpoint). CoOp: TPT's CoOp baseline (4
# context vectors, 50 epochs); MaPLe: the cross-dataset model (depth 3, 2 epochs) that TPT on
# MaPLe (jameelhassan/TPT) loads, with its test prompt "X X {class}." (no "of a" after the
# context, as that code builds it); MMRL: the cross-dataset model (1 epoch), class-token logits
# off ImageNet and the fused ones on it, the dataset's CoOp template.
BACKBONE_FILES = {
    "coop": "prompts/coop/vit_b16_ep50_16shots/nctx4_cscFalse_ctpend/seed1/prompt_learner/"
            "model.pth.tar-50",
    "maple": "prompts/maple/imagenet/seed1/MultiModalPromptLearner/model.pth.tar-2",
    "mmrl": "prompts/mmrl/imagenet/seed1/MultiModalRepresentationLearner/model.pth.tar-1"}
BACKBONES = ("clip", *BACKBONE_FILES)


def _parse(arg: str):
  parts = arg.split(",")
  dataset, method = parts[0], parts[1] if len(parts) > 1 else ""
  extra = parts[2:]
  policies = [p for p in extra if p in POLICIES]
  chosen = [b for b in extra if b in BACKBONES]
  if (dataset not in benchmarks.BENCHMARKS or method not in METHODS + tuple(GROUPS)
      or len(policies) > 1 or len(chosen) > 1 or len(policies) + len(chosen) != len(extra)):
    raise ValueError(f"configs/paper.py needs '<dataset>,<method>[,<policy>][,<backbone>]', got "
                     f"{arg!r}. Datasets: {', '.join(benchmarks.BENCHMARKS)}. Methods: "
                     f"{', '.join(METHODS)}, or {' / '.join(GROUPS)} for several. Policies: "
                     f"{', '.join(POLICIES)}. Backbones: {', '.join(BACKBONES)}.")
  return (benchmarks.BENCHMARKS[dataset], GROUPS.get(method, (method,)), method,
          (policies or ["fp32"])[0], (chosen or ["clip"])[0])


def _set_backbone(c, bench, backbone: str) -> None:
  if backbone == "clip":
    return
  path = os.path.join(tfds_builders.default_data_dir(), BACKBONE_FILES[backbone])
  if backbone == "coop":  # the context alone, into plain CLIP
    c.prompt.init = path
    return
  c.prompt.backbone, c.prompt.backbone_checkpoint = backbone, path
  if backbone == "maple":
    c.prompt.maple.update(depth=3, n_ctx=2, ctx_init="a photo")
  else:
    c.prompt.mmrl.update(alpha=0.7 if bench.name == "imagenet" else 1.0,
                         template=benchmarks.load_classes(bench.name)["templates"]["coop"][0])


def domain_spec(bench: benchmarks.Benchmark) -> str:
  """paper:<name> for tfds sets; paper:<name>:<data dir>/folders/<name> for folder sets."""
  if bench.tfds_name is not None:
    return f"{benchmarks.PREFIX}:{bench.name}"
  folder = os.path.join(tfds_builders.default_data_dir(), "folders", bench.name)
  return f"{benchmarks.PREFIX}:{bench.name}:{folder}"


def get_config(arg: str = ""):
  bench, methods, method_arg, policy, backbone = _parse(arg)
  c = defaults.base_config()
  c.model.compute_dtype = POLICIES[policy]["compute_dtype"]
  c.model.matmul_precision = POLICIES[policy]["matmul_precision"]
  c.model.checkpoint = hub.PAPER_MODEL  # or a local HF directory / OpenAI .pt file
  c.prompt.init = "a photo of a"
  c.data.domains = (domain_spec(bench),)
  # The paper's test-set size: the whole set for the ImageNet variants; CoOp's test-split
  # size for the cross-datasets (a seeded stratified subset where the tfds split is larger).
  c.data.num_images = bench.paper_size
  c.data.split = "test"
  c.data.cache_dir = ""  # images are read lazily from the tfds files; nothing to cache
  c.data.data_dir = ""  # "" -> $METATPT_DATA_DIR or ~/tensorflow_datasets
  c.data.classnames_dir = ""  # "" -> the packaged metatpt_jax/assets/datasets/<name>.json
  # "dataset": each class name scored against the dataset's label of that name; "published":
  # against the label the authors' code scored it against where that differs (TPT's, C-TPT's
  # and MTA's Food101 swap cheesecake and cheese_plate: docs/REPRODUCING.md).
  c.data.label_map = "dataset"
  c.seeds = (0,)
  c.batch_size = 1
  # The inner gradient over chunks of VIEW_CHUNK views: the same meta-gradient in 2.8 GiB per
  # sample instead of 23 (B/16, 64 views, 10 classes; docs/THROUGHPUT.md).
  every = defaults.all_methods(metatpt=dict(view_chunk=VIEW_CHUNK))
  every.update(defaults.baselines())
  every.update({kind: defaults.method_config(kind) for kind in registry.names("reference")})
  # TPT's views for this dataset wherever a method tunes on TPT's views (its spec says so:
  # TPT, C-TPT, MetaTPT's fixed-views ablation); the others keep their authors' choice.
  for name in every:
    spec = bench_methods.method_spec(every[name])[1]
    if isinstance(spec, specs.ViewsSpec) and spec.takes_dataset_views():
      every[name].view_kind = bench.view_kind
  every.tda.pos_alpha, every.tda.pos_beta = TDA_POSITIVE[bench.name]
  every.tda.templates = tda_templates(bench)
  every.tda.update(dict(n_views=TDA_VIEWS.get(bench.name, 1), view_kind="augmix"))
  if bench.name in CTPT_IMAGENET_VARIANTS:
    every.ctpt.update(dict(dispersion_weight=20.0, view_kind="augmix"))
  every.zero.temperature = POLICIES[policy]["zero_temperature"]
  c.methods = {name: every[name] for name in methods}
  _set_backbone(c, bench, backbone)
  if backbone != "clip" and "tda" in c.methods:  # TDA's classifier: the backbone's class prompts
    c.methods.tda.templates = ()
  suffix = ("" if policy == "fp32" else f"_{policy}") + ("" if backbone == "clip" else
                                                          f"_{backbone}")
  c.output_dir = os.path.join("runs", "paper", bench.name, method_arg + suffix)
  c.plot_views = False
  return c

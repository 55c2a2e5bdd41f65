"""What did the world-v3 prompt backbones learn? Zero-shot accuracy of CLIP, CoOp, MaPLe and MMRL
(configs/bench_v3.py:backbones_<name>, their trained prompts in checkpoints/prompts_v3/) on

  fit       the source styles' pictures of the 200 test-split classes: the training set itself
  dev       the held-out styles' development domains (configs/bench_v3.py:dev's domains, at most
            60 images each): other classes, other styles, as the test table's shift but on
            development data

    python tools/backbone_fit_v3.py [--num-images 60] [--prompt coop=runs/.../prompt.npz ...]

`--prompt NAME=FILE` adds a row for backbone NAME with another trained prompt (e.g. one trained
with other crops by `metatpt-train-prompt --config.train.crop_scale=...`).

What the few-shot crop scale was chosen by (configs/prompt_train.py: the highest "dev"), and a
diagnostic beside the backbone table (docs/BACKBONES.md); the test split's classes are read
only as the training set (the fit set), never in the held-out styles.
"""
import argparse
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from metatpt_jax import adapt, cli_util, prompts
from metatpt_jax.bench import methods
from metatpt_jax.clip import checkpoint
from metatpt_jax.data import domains
from metatpt_jax.data.artwork import world

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "bench_v3.py")
NAMES = ("clip", "coop", "maple", "mmrl")


def accuracy(cfg, params, arch, domain, batch=64) -> float:
  """Zero-shot top-1 (%) of the backbone `cfg.prompt` names on every image of `domain`."""
  mspec = methods.model_spec(cfg.model, arch, cfg.prompt)
  state = methods.build_state(params, arch, domain.class_names, cfg.prompt, "zero_shot", None,
                              seed=0)
  predict = jax.jit(lambda images: adapt.adapt_batch(
      state, {"image": images, "index": jnp.arange(images.shape[0])}, jax.random.key(0),
      kind="zero_shot", spec=None, mspec=mspec)["prediction"])
  images = np.asarray(domain.images, np.float32) / 255  # uint8 -> [0, 1]
  preds = np.concatenate([np.asarray(predict(images[i:i + batch]))
                          for i in range(0, len(domain.labels), batch)])
  return 100.0 * float(np.mean(preds == np.asarray(domain.labels)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num-images", type=int, default=60)
  parser.add_argument("--prompt", action="append", default=[], metavar="NAME=FILE",
                      help="an extra row: backbone NAME (coop, maple, mmrl) with the prompt FILE")
  args = parser.parse_args()
  if args.num_images < 1:
    parser.error(f"--num-images {args.num_images}: give at least 1.")
  configs = {n: cli_util.sibling_config(CONFIG, "bench_v3", f"backbones_{n}") for n in NAMES}
  for extra in args.prompt:
    name, _, path = extra.partition("=")
    if name not in NAMES[1:] or not path:
      parser.error(f"--prompt {extra!r}: give NAME=FILE with NAME one of {NAMES[1:]}.")
    if not os.path.isfile(path) or not prompts.is_context_file(path):
      parser.error(f"--prompt {extra!r}: {path} is not a prompt file (.npz, or a Dassl "
                   "checkpoint .pth/.tar-N).")
    path = os.path.abspath(path)
    cfg = cli_util.sibling_config(CONFIG, "bench_v3", f"backbones_{name}")
    if name == "coop":
      cfg.prompt.init = path
    else:
      cfg.prompt.backbone_checkpoint = path
    configs[f"{name} ({os.path.relpath(path, ROOT)})"] = cfg
  os.chdir(ROOT)  # the configs name the checkpoint and prompts relative to the repository
  params, arch = checkpoint.load_clip(configs["clip"].model.checkpoint)
  size = arch.vision.image_size
  sets = {"fit": [world.source_domain("test", image_size=size, num_classes=200, shots=16)]}
  dev_cfg = cli_util.sibling_config(CONFIG, "bench_v3", "dev")
  sets["dev"] = [domains.load_domain(d, split="dev", num_images=args.num_images, seed=0,
                                     image_size=size) for d in dev_cfg.data.domains]
  print("| backbone | fit: source styles, trained classes | dev: held-out styles "
        "(mean of domains) | " + " | ".join(d.name for d in sets["dev"]) + " |")
  print("|---" * (3 + len(sets["dev"])) + "|")
  for name, cfg in configs.items():
    fit = accuracy(cfg, params, arch, sets["fit"][0])
    dev = [accuracy(cfg, params, arch, d) for d in sets["dev"]]
    print(f"| {name} | {fit:.1f} | {np.mean(dev):.1f} | "
          + " | ".join(f"{a:.1f}" for a in dev) + " |", flush=True)


if __name__ == "__main__":
  main()

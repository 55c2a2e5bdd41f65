"""How good are TPT's confident views in world v3? (docs/WORLD_V3.md, development split only)

    python tools/probe_views_v3.py [--num-images 60]

For each development domain of configs/bench_v3.py: accuracy of the full image (zero-shot, one
prompt), of every random-crop view (TPT's 63 crops, scale 0.08-1), of the 10 % most confident
views' averaged prediction (what TPT's entropy is taken over) and how often one confident view
alone is right. No method is run; the test split is never read.
"""
import argparse
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from metatpt_jax import cli_util, losses, views
from metatpt_jax.clip import checkpoint, zeroshot
from metatpt_jax.clip.tokenizer import Tokenizer
from metatpt_jax.data import domains
from metatpt_jax.image_ops import clip_normalize
from metatpt_jax.pretrain import artwork

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "bench_v3.py"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num-images", type=int, default=60)
  parser.add_argument("--n-views", type=int, default=64)
  args = parser.parse_args()
  config = cli_util.sibling_config(str(CONFIG), "bench_v3", "dev")  # the dev domains
  params, arch = checkpoint.load_clip(config.model.checkpoint)
  tokenizer = Tokenizer()
  keep = int(args.n_views * 0.1)  # TPT's selection: int(64 * 0.1) = 6 views

  @jax.jit
  def probe(images, keys, classifier):
    def one(image, key):
      v = views.tpt_views(image, key, args.n_views)
      logits = zeroshot.zeroshot_logits(params, clip_normalize(v), classifier, arch)
      probs = jax.nn.softmax(logits, -1)
      chosen = losses.select_confident(logits, keep)
      return probs.argmax(-1), probs[chosen].mean(0).argmax(), probs.argmax(-1)[chosen]
    return jax.vmap(one)(images, keys)

  print("| domain (dev) | images | full image | any crop | confident views' mean | one "
        "confident view |")
  print("|---|---|---|---|---|---|")
  for spec in config.data.domains:
    d = domains.load_domain(spec, split="dev", num_images=args.num_images, seed=0,
                            image_size=arch.vision.image_size)
    classifier = zeroshot.build_classifier(params, arch, d.class_names, artwork.EVAL_TEMPLATES,
                                           tokenizer)
    images = jnp.asarray(d.images, jnp.float32) / 255.0
    keys = jax.random.split(jax.random.key(0), len(d.labels))
    each, mean, confident = (np.asarray(x) for x in probe(images, keys, classifier))
    labels = np.asarray(d.labels)
    print(f"| {spec[len('artwork:'):]} | {len(labels)} | {100 * np.mean(each[:, 0] == labels):.1f}"
          f" | {100 * np.mean(each[:, 1:] == labels[:, None]):.1f}"
          f" | {100 * np.mean(mean == labels):.1f}"
          f" | {100 * np.mean(confident == labels[:, None]):.1f} |", flush=True)


if __name__ == "__main__":
  main()

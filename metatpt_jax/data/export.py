"""Writes a shifted domain as an image folder (one sub-folder per class), so that a benchmark can
read a test domain through the `folder:` path, exactly as it reads a user's own images.

    python -m metatpt_jax.data.export --domain=fashion_mnist:motion_blur:3 --num_images=3000 \
        --size=64 --quality=60 --out=runs/folder_domains/fashion_mnist_motion_blur_3_jpeg

The images are shifted at `size` pixels (not at the model's resolution), then stored as JPEG at
`quality`: the folder domain differs from the in-memory one by its resolution, its resampling
and the compression, which is the point of a test domain read from files.
"""
from __future__ import annotations

import os

import numpy as np
from absl import app, flags
from PIL import Image

from metatpt_jax.data import domains as domains_lib
from metatpt_jax.errors import UserError, report_user_errors

FLAGS = flags.FLAGS
flags.DEFINE_string("domain", None, "domain spec of a packaged source, e.g. fashion_mnist:clean")
flags.DEFINE_string("split", "test", "train or test")
flags.DEFINE_integer("num_images", 1000, "a stratified subset of this many images")
flags.DEFINE_integer("seed", 0, "chooses the subset and seeds each image's shift")
flags.DEFINE_integer("size", 64, "side in pixels of the written images")
flags.DEFINE_integer("quality", 90, "JPEG quality (1-95)")
flags.DEFINE_string("out", None, "folder to write (must not exist yet)")


def write_image_folder(domain: domains_lib.Domain, root: str, quality: int = 90) -> int:
  """Writes domain.images as JPEG files root/<class name>/<index>.jpg; returns the count.

  Class folders are the class names with spaces as underscores (`folder:` reads them back), so
  their sorted order, and so the label order on reading, may differ from the domain's.
  """
  if os.path.exists(root):
    raise UserError(f"{root!r} exists; remove it or choose another --out (nothing was written).")
  for name in domain.class_names:
    os.makedirs(os.path.join(root, name.replace(" ", "_")))
  for i, (image, label) in enumerate(zip(domain.images, domain.labels)):
    folder = domain.class_names[int(label)].replace(" ", "_")
    Image.fromarray(np.asarray(image)).save(os.path.join(root, folder, f"{i:05d}.jpg"),
                                            quality=quality)
  return len(domain.labels)


def main(argv):
  del argv
  with report_user_errors("metatpt-export"):
    if not FLAGS.domain or not FLAGS.out:
      raise UserError("give --domain (e.g. fashion_mnist:motion_blur:3) and --out.")
    if os.path.exists(FLAGS.out):
      raise UserError(f"{FLAGS.out!r} exists; remove it or choose another --out (nothing was "
                      "written).")
    domain = domains_lib.load_domain(FLAGS.domain, split=FLAGS.split,
                                     num_images=FLAGS.num_images, seed=FLAGS.seed,
                                     image_size=FLAGS.size)
    count = write_image_folder(domain, FLAGS.out, FLAGS.quality)
  print(f"wrote {count} images of {domain.name} ({FLAGS.size} px, JPEG q{FLAGS.quality}) to "
        f"{FLAGS.out}")


if __name__ == "__main__":
  app.run(main)

"""What was tried to make test-time tuning move the small CLIP: steps, learning rates, losses.

Runs on shifted images of the TRAIN split (a development set: the benchmark's test images are
never used to choose settings):

    metatpt-bench --config configs/sweep_small.py
"""
from metatpt_jax.bench import defaults


def get_config():
  c = defaults.base_config()
  c.data.split = "train"
  c.data.domains = ("fashion_mnist:defocus_blur:3", "fashion_mnist:affine:3",
                    "animal_mnist:affine:3")
  c.data.num_images = 100
  c.seeds = (0,)
  strong = dict(outer_steps=4, prompt_lr=0.05)
  meta = defaults.metatpt_method
  mild = dict(defaults.metatpt_method().generator, area_min=0.5)
  c.methods = {
      "zero_shot": dict(kind="zero_shot"),
      "tpt": defaults.tpt_method(),
      "tpt_4steps_lr005": defaults.tpt_method(steps=4, lr=0.05),
      "tpt_4steps_lr005_mildcrops": defaults.tpt_method(steps=4, lr=0.05, crop_scale=(0.5, 1.0)),
      "metatpt": meta(),
      "metatpt_4steps_lr005": meta(**strong),
      "metatpt_4steps_lr005_inner1": meta(inner_lr=1.0, **strong),
      "metatpt_4steps_lr005_entropy_only": meta(consistency_weight=0.0, **strong),
      "metatpt_4steps_lr005_embedding_aux": meta(aux_loss="embedding_agreement", **strong),
      # Mild crops (area 0.5-1, as the best TPT variant), then also faster generator learning.
      "metatpt_4steps_lr005_mildcrops": meta(generator=mild, **strong),
      "metatpt_4steps_lr005_mildcrops_fastgen": meta(generator=mild, inner_lr=0.5,
                                                      generator_lr=0.01, **strong),
  }
  c.output_dir = "runs/sweep_small"
  c.plot_views = False
  c.progress_bar = False
  return c

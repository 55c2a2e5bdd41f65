"""Zero-shot CLIP as a test-time method: no adaptation.

`zero_shot`: the initial prompt on the image itself, the reference every adaptation method is
compared with. `zero_shot_ensemble`: CLIP's prompt ensembling (OpenAI's ImageNet notebook): each
class's embedding is the renormalised mean of its embeddings under a named template set
(`TEMPLATE_SETS`), built once per domain from the model and the class names.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Literal

import jax

from metatpt_jax import registry
from metatpt_jax.frozen_clip import FrozenCLIP, ModelSpec, class_features, encode_images, logits
from metatpt_jax.specs import Spec


def zero_shot_one_sample(frozen: FrozenCLIP, image: jax.Array, key: jax.Array, spec,
                         mspec: ModelSpec, source=None):
  """CLIP with the initial prompt on the image itself: [S, S, 3] -> (logits [C], no metrics)."""
  del key, spec, source
  feats = encode_images(frozen, image[None], mspec)
  return logits(frozen, feats, class_features(frozen, frozen.ctx_init, mspec))[0], {}


registry.register(registry.Method("zero_shot", registry.stateless(zero_shot_one_sample)))


def _clip_templates() -> tuple[str, ...]:
  """CLIP's 80 ImageNet templates (the asset of ImageNet-R, whose sources it names)."""
  path = os.path.join(os.path.dirname(__file__), "assets", "datasets", "imagenet_r.json")
  with open(path) as f:
    return tuple(json.load(f)["templates"]["clip"])


def _artwork_templates() -> tuple[str, ...]:
  """World v3's pretraining captions, one per described look."""
  from metatpt_jax.pretrain import artwork
  return artwork.DESCRIBED_TEMPLATES


# CLIP's 7-template ImageNet ensemble (the subset OpenAI's prompt-engineering notebook selected
# from the 80), as TDA's code builds its classifier on ImageNet, -A, -V2, Caltech101, Cars, SUN397.
CLIP7_TEMPLATES = ("itap of a {}.", "a bad photo of the {}.", "a origami {}.",
                   "a photo of the large {}.", "a {} in a video game.", "art of the {}.",
                   "a photo of the small {}.")

# name -> fn() -> templates, each with one "{}" for the class name.
TEMPLATE_SETS = {"clip": _clip_templates, "clip7": lambda: CLIP7_TEMPLATES,
                 "artwork_described": _artwork_templates}


@dataclasses.dataclass(frozen=True)
class EnsembleSpec(Spec):
  templates: Literal["clip", "clip7", "artwork_described"] = "clip"  # a key of TEMPLATE_SETS


def ensemble_classifier(params, arch, class_names, spec: EnsembleSpec) -> jax.Array:
  """The per-domain state: unit-norm class embeddings [C, E] of the template set."""
  from metatpt_jax.clip import zeroshot
  return zeroshot.build_classifier(params, arch, class_names, TEMPLATE_SETS[spec.templates]())


def ensemble_one_sample(frozen: FrozenCLIP, classifier: jax.Array, image: jax.Array,
                        key: jax.Array, spec, mspec: ModelSpec, source=None):
  """CLIP with the ensemble classifier on the image itself: (logits [C], no metrics)."""
  del key, spec, source
  return logits(frozen, encode_images(frozen, image[None], mspec), classifier)[0], {}


registry.register(registry.Method(
    "zero_shot_ensemble", ensemble_one_sample, spec_type=EnsembleSpec, group="reference",
    model_state=ensemble_classifier))

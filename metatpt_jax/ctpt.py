"""C-TPT (Yoon et al., ICLR 2024): TPT's loss minus a weighted dispersion of the class text
features, which keeps the tuned prompt calibrated. Everything else is TPT (`tpt`)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from metatpt_jax import registry, tpt


def text_feature_dispersion(text: jax.Array) -> jax.Array:
  """C-TPT's ATFD: mean L2 distance of unit class text features [C, E] to their centroid."""
  return jnp.mean(jnp.linalg.norm(text - jnp.mean(text, axis=0), axis=-1))


@dataclasses.dataclass(frozen=True)
class CTPTSpec(tpt.TPTSpec):
  """TPT's settings plus the weight of the text-feature dispersion reward (50: the authors'
  ImageNet and fine-grained value; 20 for ImageNet-A/-V2/-R/-Sketch)."""
  dispersion_weight: float = 50.0

  def text_loss(self, text: jax.Array) -> jax.Array:
    return -self.dispersion_weight * text_feature_dispersion(text)


registry.register(registry.Method("ctpt", registry.stateless(tpt.tpt_adapt_one_sample),
                                  spec_type=CTPTSpec, group="baseline"))

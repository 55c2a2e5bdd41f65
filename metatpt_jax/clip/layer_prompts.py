"""Per-layer prompt tokens: the one hook the CLIP towers take for deep prompt learners.

Deep prompt learners write learned tokens into a tower's sequence between blocks: MaPLe writes
its text prompts over positions 1..n and its visual prompts over the last n tokens before
blocks 1..depth-1; MMRL inserts its representation tokens after the class / start token before
one block and writes over them before each later block. `LayerPrompts` says which tokens go
before which block and where; the towers (`model.Encoder`, `shared_prefix`) apply it and know
nothing else about any method.

Inserted and written tokens get no positional embedding (MaPLe's and MMRL's code add none).
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class LayerPrompts:
  """tokens[i]: [n, W] tokens placed before block i (None: block i's input is left alone).

  position: the first sequence position they occupy (negative: counted from the end, e.g. -n
    for the last n tokens). insert_at: the block before which the tokens are inserted, making
    the sequence n longer (every other block writes over the n tokens at `position`); -1: never.
  """
  tokens: tuple
  position: int = flax.struct.field(pytree_node=False, default=1)
  insert_at: int = flax.struct.field(pytree_node=False, default=-1)

  def before_block(self, x: jax.Array, layer: int) -> jax.Array:
    """x [..., L, W] as block `layer` sees it."""
    if layer >= len(self.tokens) or self.tokens[layer] is None:
      return x
    t = self.tokens[layer].astype(x.dtype)
    t = jnp.broadcast_to(t, x.shape[:-2] + t.shape)
    pos = self.position if self.position >= 0 else x.shape[-2] + self.position
    end = pos if layer == self.insert_at else pos + t.shape[-2]
    if layer != self.insert_at and end > x.shape[-2]:
      raise ValueError(f"Prompt tokens at positions {pos}..{end - 1} before block {layer} run "
                       f"past the sequence of {x.shape[-2]} tokens.")
    return jnp.concatenate([x[..., :pos, :], t, x[..., end:, :]], axis=-2)

  def inserted(self) -> int:
    """Tokens the sequence gains (0 when nothing is inserted)."""
    if self.insert_at < 0 or self.tokens[self.insert_at] is None:
      return 0
    return self.tokens[self.insert_at].shape[-2]

  def shift(self, indices: jax.Array) -> jax.Array:
    """Sequence indices (e.g. EOT positions) after the insertion: those at or after
    `position` move by the inserted count (MMRL pools its text at EOT + 5)."""
    n = self.inserted()
    if not n:
      return indices
    if self.position < 0:
      raise ValueError("An insertion counted from the end cannot shift pooled positions.")
    return indices + n * (indices >= self.position)


def apply(prompts: LayerPrompts | None, x: jax.Array, layer: int) -> jax.Array:
  return x if prompts is None else prompts.before_block(x, layer)

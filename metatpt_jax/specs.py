"""Static method specs: frozen dataclasses that check themselves when made.

A spec holds a method's hyper-parameters. It is hashable, so jitted steps take it as a static
argument. Variant fields are typed `Literal[...]`: a value outside the literal's choices raises
`UserError` at construction (and at `replace`), naming the valid choices, instead of silently
running another variant. Subclasses add their own range checks in `check`.
"""
from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any, Literal

from metatpt_jax.errors import UserError


@functools.cache
def literal_fields(spec_type: type) -> dict[str, tuple]:
  """Field name -> valid values, for the `Literal`-typed fields of a spec type."""
  hints = typing.get_type_hints(spec_type)
  return {name: typing.get_args(hint) for name, hint in hints.items()
          if typing.get_origin(hint) is Literal}


@dataclasses.dataclass(frozen=True)
class Spec:
  """Base of method specs: Literal fields validated, `replace`, plain-dict views."""

  def __post_init__(self):
    valid_values = literal_fields(type(self))
    for f in dataclasses.fields(self):
      valid, value = valid_values.get(f.name), getattr(self, f.name)
      if valid is not None and value not in valid:
        raise UserError(f"{type(self).__name__}.{f.name}={value!r} is not a valid choice; "
                        f"choose one of {valid}.")
      if isinstance(value, list):  # configs give lists; specs must stay hashable
        object.__setattr__(self, f.name, tuple(value))
    self.check()

  def check(self) -> None:
    """Range checks beyond the Literal choices; raise UserError naming the field and fix."""

  def replace(self, **changes) -> Spec:
    """A copy with `changes` applied (validated like a new spec)."""
    return dataclasses.replace(self, **changes)

  @classmethod
  def field_names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))

  def fields_dict(self) -> dict[str, Any]:
    """Field name -> value (shallow: nested specs stay objects)."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True)
class ViewsSpec(Spec):
  """TPT's views: `n_views` (view 0 is the image), how they are made, and the fraction of the
  most confident kept. Methods built on those views derive their spec from this one."""
  n_views: int = 64
  selection_ratio: float = 0.1
  view_kind: Literal["random_crop", "augmix"] = "random_crop"  # a key of tpt.VIEW_MAKERS
  crop_scale: tuple = (0.08, 1.0)

  @property
  def num_keep(self) -> int:
    return int(self.n_views * self.selection_ratio)

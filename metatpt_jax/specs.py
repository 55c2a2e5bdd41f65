"""Static method specs: frozen dataclasses that check themselves when made.

A spec holds a method's hyper-parameters. It is hashable, so jitted steps take it as a static
argument. Choice fields (typed `Literal[...]`, or `Annotated[str, Choices(table)]` for choices
registered in a table at run time) refuse a value outside their choices at construction (and at
`replace`) with a `UserError` naming the valid ones, instead of silently running another variant.
Subclasses add range checks in `check`, and declare in `code_path` what selects their code.

View-based methods derive their spec from `ViewsSpec` (TPT's views; `make_views` is the one view
maker) or `ConfidentViewsSpec` (those views and the fraction of the most confident kept).
"""
from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from metatpt_jax import augmix, views
from metatpt_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Choices:
  """`Annotated[str, Choices(table)]`: the field's valid values are the keys of `table` (a dict
  that registrations may extend, read when a spec is made)."""
  table: Mapping


@functools.cache
def choice_fields(spec_type: type) -> dict[str, Any]:
  """Field name -> its choices (a tuple, or a `Choices` whose table is read when checked)."""
  hints = typing.get_type_hints(spec_type, include_extras=True)
  out = {}
  for name, hint in hints.items():
    if typing.get_origin(hint) is Literal:
      out[name] = typing.get_args(hint)
    elif typing.get_origin(hint) is typing.Annotated:
      for extra in hint.__metadata__:
        if isinstance(extra, Choices):
          out[name] = extra
  return out


def _valid(choices) -> tuple:
  return tuple(choices.table) if isinstance(choices, Choices) else choices


@dataclasses.dataclass(frozen=True)
class Spec:
  """Base of method specs: choice fields validated, `replace`, plain-dict views, code paths."""
  # Fields added after committed records were made, each at a default that computes what those
  # records did: left out of a record's setting while at that default (bench.fingerprint), so
  # the older records keep their fingerprints.
  later_fields: ClassVar[tuple[str, ...]] = ()
  # Fields beyond the choice fields whose value selects code, not only numbers (e.g. a bool).
  code_fields: ClassVar[tuple[str, ...]] = ()

  def __post_init__(self):
    valid_values = choice_fields(type(self))
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      if f.name in valid_values and value not in _valid(valid_values[f.name]):
        raise UserError(f"{type(self).__name__}.{f.name}={value!r} is not a valid choice; "
                        f"choose one of {_valid(valid_values[f.name])}.")
      if isinstance(value, list):  # configs give lists; specs must stay hashable
        object.__setattr__(self, f.name, tuple(value))
    self.check()

  def check(self) -> None:
    """Range checks beyond the choices; raise UserError naming the field and the fix."""

  def code_path(self) -> tuple:
    """What decides which code runs (not the numbers it runs with): the value of every choice
    field and `code_fields`, then `switches()`. Specs of equal code paths run the same code."""
    names = (*choice_fields(type(self)), *self.code_fields)
    return tuple(getattr(self, n) for n in names) + self.switches()

  def switches(self) -> tuple:
    """Code-selecting conditions derived from several fields or nested specs (none here)."""
    return ()

  def replace(self, **changes) -> Spec:
    """A copy with `changes` applied (validated like a new spec)."""
    return dataclasses.replace(self, **changes)

  @classmethod
  def field_names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))

  def fields_dict(self) -> dict[str, Any]:
    """Field name -> value (shallow: nested specs stay objects)."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


# How TPT makes its views: view_kind -> fn(image, key, n_views, source, scale) -> [V, S, S, 3].
VIEW_MAKERS = {
    "random_crop": views.tpt_views,
    "augmix": augmix.augmix_views,   # TPT's choice for the fine-grained data sets
}


@dataclasses.dataclass(frozen=True)
class ViewsSpec(Spec):
  """TPT's views of one image: `n_views` (view 0 is the image itself) and how the others are
  made (`view_kind`: random resized crops with flips, or AugMix; `crop_scale` of the crops)."""
  n_views: int = 64
  view_kind: Literal["random_crop", "augmix"] = "random_crop"  # a key of VIEW_MAKERS
  crop_scale: tuple = (0.08, 1.0)

  def make_views(self, image, key, source: views.Source | None = None):
    """[n_views, S, S, 3]: view 0 = `image` [S, S, 3]; views 1.. cut from `source` (default:
    the image itself) with keys split from `key`."""
    return VIEW_MAKERS[self.view_kind](image, key, self.n_views, source, scale=self.crop_scale)

  def takes_dataset_views(self) -> bool:
    """Whether the method tunes a prompt on TPT's views, so a benchmark that gives TPT its
    per-dataset views (AugMix on the fine-grained sets) gives them to it too. Training-free
    methods keep their authors' own choice."""
    return False


@dataclasses.dataclass(frozen=True)
class ConfidentViewsSpec(ViewsSpec):
  """TPT's views and the fraction of them, the most confident (lowest entropy), that are kept."""
  selection_ratio: float = 0.1

  @property
  def num_keep(self) -> int:
    return int(self.n_views * self.selection_ratio)

  def check(self) -> None:
    if self.num_keep < 1:
      raise UserError(f"{type(self).__name__} keeps no view: needs n_views * selection_ratio >= "
                      f"1; got n_views={self.n_views}, selection_ratio={self.selection_ratio}.")

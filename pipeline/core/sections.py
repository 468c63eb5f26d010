"""The base of every params.yaml section: unknown keys refused, values frozen, numbers finite and never booleans."""

from __future__ import annotations

from types import UnionType
from typing import Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


class Section(BaseModel):
    """A params.yaml section: unknown keys are rejected, values are immutable once validated.

    Numbers must be finite (no .inf/.nan) and never booleans: YAML reads yes/no/on/off as true/false, which
    pydantic would otherwise take as 1/0 (`epochs: yes` would train one epoch).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: object, info: ValidationInfo) -> object:
        if info.field_name and _takes_numbers(cls.model_fields[info.field_name].annotation) and _holds_bool(value):
            raise ValueError("takes numbers, not booleans (YAML reads yes/no/on/off/true/false as booleans)")
        return value


def _takes_numbers(annotation: object) -> bool:
    """True when a field of this type holds numbers (int, float, Literal[1, 3], tuple[int, int], ... | None)."""
    if annotation in (int, float):
        return True
    if get_origin(annotation) is Literal:
        return any(isinstance(a, int | float) and not isinstance(a, bool) for a in get_args(annotation))
    if get_origin(annotation) in (Union, UnionType, tuple):
        return any(_takes_numbers(a) for a in get_args(annotation))
    return False


def _holds_bool(value: object) -> bool:
    """True for a boolean, or a list/tuple with one."""
    return isinstance(value, bool) or (isinstance(value, list | tuple) and any(isinstance(v, bool) for v in value))

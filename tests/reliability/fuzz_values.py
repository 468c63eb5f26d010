"""Hypothesis strategies for params.yaml values (tests/reliability/test_fuzz_params.py), read off the pydantic models.

`leaves` lists every parameter (dotted key path, pydantic field, owning model); `valid_values` draws values a field
certainly accepts (from its type, bounds and Literal choices; known-good examples where it has its own validator),
`invalid_values` YAML text it certainly refuses (wrong types, out of its bounds, YAML booleans and .inf/.nan where
numbers belong, null where it is not optional).
"""

from __future__ import annotations

import math
import types
from typing import Literal, Union, get_args, get_origin

import annotated_types as at
import yaml
from hypothesis import strategies as st
from pydantic import BaseModel
from pydantic.fields import FieldInfo

TEXT = st.characters(blacklist_categories=["Cs"], blacklist_characters="\n\r\x85\u2028\u2029")  # one-line values


def leaves(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], FieldInfo, type]]:
    """(dotted key path, field, owning model) of every leaf parameter; sub-sections are walked."""
    found = []
    for name, field in model.model_fields.items():
        key = (*prefix, field.alias or name)
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            found += leaves(sub, key)
        else:
            found.append((key, field, model))
    return found


def parts(annotation) -> tuple[object, bool]:
    """(the annotation without None, whether None is allowed)."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return (args[0] if len(args) == 1 else annotation), len(args) < len(get_args(annotation))
    return annotation, False


def _bounds(field: FieldInfo) -> dict[str, float]:
    return {k: getattr(m, k) for m in field.metadata for k in ("ge", "gt", "le", "lt", "min_length")
            if hasattr(m, k) and isinstance(m, at.Ge | at.Gt | at.Le | at.Lt | at.MinLen)}


def _has_validator(model: type, name: str) -> bool:
    validators = model.__pydantic_decorators__.field_validators.values()
    return any(name in v.info.fields for v in validators)


def as_yaml(value) -> str:
    """`value` as one line of YAML flow text."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).split("\n...")[0].strip()


def _numbers(kind: type, bounds: dict) -> st.SearchStrategy:
    lo = bounds.get("ge", bounds.get("gt"))
    hi = bounds.get("le", bounds.get("lt"))
    if kind is int:
        return st.integers(None if lo is None else math.ceil(lo) + ("gt" in bounds),
                           None if hi is None else math.floor(hi) - ("lt" in bounds))
    return st.floats(lo, hi, exclude_min="gt" in bounds, exclude_max="lt" in bounds, allow_nan=False,
                     allow_infinity=False)


def valid_values(key: tuple[str, ...], field: FieldInfo, model: type) -> st.SearchStrategy:
    """Values the field certainly accepts (None: fields with custom validators get known-good examples)."""
    kind, nullable = parts(field.annotation)
    bounds = _bounds(field)
    known = {"url": ["https://example.com/d.tar.gz", "file:///tmp/d"], "inbox": ["s3://bucket/prefix"],
             "endpoint_url": ["http://127.0.0.1:9000", "https://s3.example.com"]}
    if _has_validator(model, key[-1]):
        values = st.sampled_from(known.get(key[-1], [field.default]))
    elif get_origin(kind) is Literal:
        values = st.sampled_from(get_args(kind))
    elif kind in (int, float):
        values = _numbers(kind, bounds)
    elif kind is bool:
        values = st.booleans()
    elif kind is str:
        values = st.text(TEXT, min_size=int(bounds.get("min_length", 0)), max_size=20)
    elif get_origin(kind) is tuple:
        values = st.tuples(*[_numbers(a, {}) for a in get_args(kind)]).map(list)
    else:
        raise AssertionError(f"no valid values for {key}: {kind}")
    return values | st.none() if nullable else values


NOT_NUMBERS = ['"abc"', "fast", "[1, 2]", "{a: 1}", "yes", "no", "on", "off", "true", "false", "2024-01-01", ".nan",
               ".inf", "-.inf", ".NaN", "1e400", '""']


def invalid_values(key: tuple[str, ...], field: FieldInfo, model: type) -> st.SearchStrategy[str]:
    """YAML text the field certainly refuses."""
    kind, nullable = parts(field.annotation)
    bounds = _bounds(field)
    nulls = [] if nullable else ["~", "null", ""]
    if get_origin(kind) is Literal:
        choices = get_args(kind)
        other = st.text(max_size=10).filter(lambda t: t not in choices) if isinstance(choices[0], str) else (
            st.integers().filter(lambda n: n not in choices))
        return st.sampled_from([*nulls, "[1]", "{a: 1}", "true", "1.5"]) | other.map(as_yaml)
    if kind in (int, float):
        outside = []
        if "ge" in bounds or "gt" in bounds:
            lo = bounds.get("ge", bounds.get("gt"))
            below = st.integers(1, 10**30) if kind is int else st.floats(1e-6, 1e300)
            outside.append(below.map(lambda d: lo - d))
            if "gt" in bounds:
                outside.append(st.just(lo))
        if "le" in bounds or "lt" in bounds:
            hi = bounds.get("le", bounds.get("lt"))
            above = st.integers(1, 10**30) if kind is int else st.floats(1e-6, 1e300)
            outside.append(above.map(lambda d: hi + d))
            if "lt" in bounds:
                outside.append(st.just(hi))
        fractions = ["1.5", '"2.5"', "0.1"] if kind is int else []
        return st.sampled_from(NOT_NUMBERS + nulls + fractions) | st.one_of(*outside).map(as_yaml) if outside else (
            st.sampled_from(NOT_NUMBERS + nulls + fractions))
    if kind is bool:
        return st.sampled_from(["2", "maybe", "[true]", "{a: 1}", "0.5", '"sure"', *nulls])
    if kind is str:
        bad = {"url": ['"ftp://x"', "example.com"], "inbox": ["bucket/prefix", '"s3://"'],
               "endpoint_url": ["localhost:9000", '"http://"', '"http://h:99999"']}.get(key[-1], [])
        short = ['""'] if bounds.get("min_length", 0) >= 1 else []
        if bounds.get("min_length", 0) >= 3:
            short.append('"ab"')
        return st.sampled_from(["12", "1.5", "true", "[a, b]", "{a: 1}", "2024-01-01", *nulls, *bad, *short])
    if get_origin(kind) is tuple:
        return st.sampled_from(["[1]", "[1, 2, 3]", "abc", "[a, b]", "[true, 2]", "5", "{a: 1}", "[.nan, 1.0]",
                                "[1.0, .inf]", *nulls])
    raise AssertionError(f"no invalid values for {key}: {kind}")

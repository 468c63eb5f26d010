"""Nested results (params, metrics JSON) as the flat, dotted key → value maps that MLflow logs."""

from __future__ import annotations

import math


def flatten(prefix: str, obj) -> dict[str, object]:
    """{'train': {'augment': {'flip': True}}} → {'train.augment.flip': True}."""
    if isinstance(obj, dict):
        out: dict[str, object] = {}
        for key, value in obj.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), value))
        return out
    return {prefix: obj}


def numeric_metrics(prefix: str, obj) -> dict[str, float]:
    """The finite numbers (not booleans) of `flatten(prefix, obj)`, as floats."""
    return {
        k: float(v)
        for k, v in flatten(prefix, obj).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def text_tags(prefix: str, obj: dict, keys: tuple[str, ...]) -> dict[str, str]:
    """The named word (not number) entries of a metrics dict as `prefix.key` → str tags; missing ones left out."""
    return {f"{prefix}.{key}": str(obj[key]) for key in keys if obj.get(key) is not None}

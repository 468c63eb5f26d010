"""Formatting for bench/report.py: numbers that never round a miss into a pass, met/missed cells, markdown tables.

Pure standard library (the report and its unit test import nothing heavy).
"""

from __future__ import annotations

import operator
import statistics
from collections.abc import Callable, Iterable, Sequence

OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}
SYMBOL = {">=": "≥", "<=": "≤", ">": ">", "<": "<"}
OLD = "not judged: old method, not yet re-measured"


def num(value: float | None, digits: int = 2, bound: tuple[str, float] | None = None, sign: bool = False) -> str:
    """`value` with `digits` decimals (thousands separated), more when fewer would flip its comparison with `bound`.

    Example: num(3.8965, 2, (">=", 3.9)) gives "3.896", not "3.90".
    """
    if value is None:
        return "n/a"
    if bound is not None:
        op, limit = OPS[bound[0]], bound[1]
        truth = op(value, limit)
        while digits < 9 and op(float(f"{value:.{digits}f}"), limit) != truth:
            digits += 1
    return f"{value:{'+' if sign else ''},.{digits}f}"


def target(op: str, limit: float, unit: str = "") -> str:
    """A target as shown in the tables: "≥ 3.9", "≤ 10 s"."""
    return f"{SYMBOL[op]} {limit:g}{(' ' + unit) if unit else ''}"


def passes(value: float | None, op: str, limit: float) -> bool | None:
    """Whether `value` meets `op limit` (None when there is no value)."""
    return None if value is None else OPS[op](value, limit)


def met(ok: bool | str | None) -> str:
    """The met column: yes, **no**, – (no target or no value), or a reason it is not judged."""
    if isinstance(ok, str):
        return ok
    return "yes" if ok else ("**no**" if ok is False else "–")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def minutes(seconds: float | None) -> str:
    """Seconds as "12 min 34 s" (or "n/a")."""
    if seconds is None:
        return "n/a"
    whole = round(seconds)
    return f"{whole // 60} min {whole % 60} s" if whole >= 60 else f"{seconds:.1f} s"


def median(values: Iterable[float]) -> float | None:
    """Median, None for no values."""
    values = list(values)
    return statistics.median(values) if values else None


def dig(data: object, *keys: object, default: object = None) -> object:
    """data[k1][k2]… or `default` when any step is missing (results sections are read defensively)."""
    for key in keys:
        found = key in data if isinstance(data, dict) else isinstance(key, int) and -len(data) <= key < len(data)
        if not isinstance(data, dict | list) or not found:
            return default
        data = data[key]  # type: ignore[index]
    return data

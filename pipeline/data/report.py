"""The validation report: GX results as JSON-able failures with example rows, and their one-screen text form.

Each failure names the expectation, its table.column, how many rows broke it and up to `limit` example rows
(split, index, label, ..., offending value; for leakage also where else the image appears), so a failing
`mlops validate` or a rejected monitoring batch says exactly which images to look at. `skipped_files` carries
the source files ingest left out (`ingest.on_bad_file: skip`) into the report, so a passing validation still
says what the data lacks.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import pandas as pd

# Columns shown in example rows for each table (besides the failing column itself).
_EXAMPLE_COLUMNS = {
    "images": ("split", "index", "label"),
    "classes": ("split", "label", "class_name"),
    "splits": ("split",),
}


def _jsonable(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _column_of(kwargs: dict) -> str | None:
    if "column" in kwargs:
        return kwargs["column"]
    if "column_A" in kwargs:
        return f"{kwargs['column_A']},{kwargs['column_B']}"
    return None


def _row_examples(
    table: str, df: pd.DataFrame, column: str | None, kwargs: dict, row_ids: list, images: pd.DataFrame
) -> list[dict]:
    """The offending rows `row_ids` of `df`: identifying columns plus the checked one(s)."""
    value_cols = [c for c in (kwargs.get("column"), kwargs.get("column_A"), kwargs.get("column_B")) if c]
    keep = [c for c in _EXAMPLE_COLUMNS[table] if c in df.columns]
    keep += [c for c in value_cols if c not in keep]
    rows = df.set_index("row_id").loc[row_ids, keep].to_dict(orient="records")
    if table == "images" and column == "cross_split_duplicate":
        for row, rid in zip(rows, row_ids, strict=True):
            h = images.at[rid, "hash"]
            same = images[(images["hash"] == h) & (images["row_id"] != rid)]
            row["also_in"] = [f"{s}:{i}" for s, i in zip(same["split"], same["index"], strict=True)][:3]
    return [cast(dict, _jsonable(r)) for r in rows]


def _examples(
    table: str,
    df: pd.DataFrame,
    column: str | None,
    kwargs: dict,
    result: dict,
    images: pd.DataFrame,
    class_names: list[str],
    limit: int,
) -> list[dict]:
    """Example offending rows as plain dicts (split, index, label, ..., offending value)."""
    index_list = result.get("partial_unexpected_index_list") or result.get("unexpected_index_list") or []
    row_ids = [item["row_id"] for item in index_list if isinstance(item, dict) and "row_id" in item][:limit]
    if row_ids:
        return _row_examples(table, df, column, kwargs, row_ids, images)
    if "value_set" in kwargs and ("partial_missing_list" in result or isinstance(result.get("observed_value"), list)):
        # distinct-values expectations: GX 1.24 reports missing_count/partial_missing_list (observed_value is None)
        if "partial_missing_list" in result:
            missing = list(result["partial_missing_list"])[:limit]
        else:
            missing = sorted(set(kwargs["value_set"]) - set(result["observed_value"]))[:limit]
        return [
            {
                "split": "train",
                "label": v,
                "class_name": class_names[v] if isinstance(v, int) and 0 <= v < len(class_names) else None,
                "count": 0,
            }
            for v in missing
        ]
    return []


def _failure(table: str, r, tables: dict[str, pd.DataFrame], class_names: list[str], limit: int) -> dict:
    """One failed expectation result `r` of `table` as a JSON-able report entry."""
    cfg = r.expectation_config
    kwargs = {k: v for k, v in dict(cfg.kwargs).items() if k not in ("batch_id", "result_format")}
    result = dict(r.result or {})
    column = _column_of(kwargs)
    entry = {
        "expectation": cfg.type,
        "description": cfg.description,
        "table": table,
        "column": column,
        "kwargs": _jsonable(kwargs),
        "unexpected_count": result.get("unexpected_count"),
        "unexpected_percent": result.get("unexpected_percent"),
        "examples": _examples(table, tables[table], column, kwargs, result, tables["images"], class_names, limit),
    }
    if result.get("observed_value") is not None:
        entry["observed_value"] = _jsonable(result["observed_value"])
    if entry["unexpected_count"] is None and "missing_count" in result:
        entry["unexpected_count"] = result["missing_count"]  # classes absent, for distinct-values checks
    exc = r.exception_info or {}
    if exc.get("raised_exception"):
        entry["exception"] = str(exc.get("exception_message"))
    return cast(dict, _jsonable(entry))


def failures(
    results: dict[str, Any], tables: dict[str, pd.DataFrame], class_names: list[str], limit: int
) -> list[dict]:
    """Every failed expectation of the GX `results` (per table name), with up to `limit` example rows each."""
    return [
        _failure(table, r, tables, class_names, limit)
        for table, suite_result in results.items()
        for r in suite_result.results
        if not r.success
    ]


def statistics(results: dict[str, Any]) -> dict[str, int]:
    """Evaluated / successful / unsuccessful expectation counts over all tables' GX results."""
    evaluated = sum(len(r.results) for r in results.values())
    successful = sum(1 for r in results.values() for e in r.results if e.success)
    return {
        "evaluated_expectations": evaluated,
        "successful_expectations": successful,
        "unsuccessful_expectations": evaluated - successful,
    }


def format_failure(f: dict) -> list[str]:
    """A report failure entry as indented text lines: expectation, where, counts, then one line per example."""
    where = f"{f['table']}.{f['column']}" if f.get("column") else f["table"]
    count = f.get("unexpected_count")
    pct = f.get("unexpected_percent")
    kind = "missing" if f["expectation"].startswith("expect_column_distinct_values") else "unexpected"
    amount = "" if count is None else f": {count} {kind}" + ("" if pct is None else f" ({pct:.3g}%)")
    lines = [f"  - {f['expectation']} on {where} [{f.get('description') or ''}]{amount}"]
    if f.get("exception"):
        lines.append(f"      error: {f['exception']}")
    if f.get("observed_value") is not None and not f["examples"]:
        lines.append(f"      observed: {f['observed_value']}")
    lines.extend("      " + " ".join(f"{k}={v}" for k, v in ex.items()) for ex in f["examples"])
    return lines


def skipped_files(manifest: dict) -> dict:
    """The report's `skipped_files` section: how many source files ingest skipped, and which (path, reason)."""
    files = [dict(f) for f in manifest.get("skipped_files", [])]
    return {"count": len(files), "files": files}


def format_skipped(section: dict, limit: int = 10) -> list[str]:
    """One-screen text for a `skipped_files` section: a headline, then up to `limit` 'path: reason' lines."""
    if not section["count"]:
        return []
    lines = [f"note: ingest skipped {section['count']} bad source file(s) (ingest.on_bad_file: skip):"]
    lines += [f"  {f['path']}: {f['reason']}" for f in section["files"][:limit]]
    if section["count"] > limit:
        lines.append(f"  … and {section['count'] - limit} more (skipped_files in the report)")
    return lines

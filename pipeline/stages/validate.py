"""Data validation stage: Great Expectations 1.x suite over a per-image table built from the ingested shards.

The shards are summarised into small pandas tables (vectorised numpy, a sha1 per image), and GX validates those:

* ``images``  - one row per image: shape, dtype, pixel statistics, non-finite flag, content hash, leakage flag;
* ``classes`` - one row per (split, class): count, fraction and ratio to the uniform fraction (balance);
* ``splits``  - one row per required split: image count and the count the manifest claims.

`run` always writes a JSON report (and GX data docs as a static HTML site); on failure it raises StageError naming
each failing expectation with example rows (split, index, label, offending value).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core import io
from pipeline.core.config import ValidateConfig
from pipeline.core.errors import StageError
from pipeline.core.splits import REQUIRED_SPLITS, SPLITS
from pipeline.data.images import image_hashes

_CHUNK = 8192  # images per vectorised block: bounds float64 temporaries to ~50 MB for 28x28x1

# Columns shown in example rows for each table (besides the failing column itself).
_EXAMPLE_COLUMNS = {
    "images": ("split", "index", "label"),
    "classes": ("split", "label", "class_name"),
    "splits": ("split",),
}


# --------------------------------------------------------------------------------------------- tables

def _iter_shards(data_dir: Path, split: str) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Yield (file name, x, y) per shard of `split` (same layout read_split concatenates).

    Shards are read one at a time rather than through io.read_split so that a shard with a different image shape
    (which np.concatenate would reject) still becomes table rows that the shape expectations can point at.
    """
    for path in sorted(data_dir.glob(f"{split}-*.npz")):
        try:
            with np.load(path, allow_pickle=False) as data:
                x, y = data["x"], data["y"]
        except (OSError, ValueError, KeyError) as exc:
            raise StageError(f"{path}: unreadable shard ({exc}); re-run `mlops ingest`.") from exc
        if len(x) != len(y):
            raise StageError(f"{path}: x has {len(x)} images but y has {len(y)} labels; re-run `mlops ingest`.")
        yield path.name, x, y


def _image_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image mean/std/min/max (over finite values) and a non-finite flag, vectorised in blocks."""
    n = len(x)
    flat = x.reshape(n, -1) if n else x.reshape(0, 0)
    out = {k: np.full(n, np.nan) for k in ("mean", "std", "min", "max")}
    out["non_finite"] = np.zeros(n, dtype=bool)
    if n == 0 or flat.shape[1] == 0:
        return out
    is_float = np.issubdtype(flat.dtype, np.floating) or np.issubdtype(flat.dtype, np.complexfloating)
    for start in range(0, n, _CHUNK):
        sl = slice(start, start + _CHUNK)
        block = flat[sl].astype(np.float64)
        if is_float:
            finite = np.isfinite(block)
            out["non_finite"][sl] = ~finite.all(axis=1)
            if not finite.all():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows -> NaN stats, flagged anyway
                    masked = np.where(finite, block, np.nan)
                    out["mean"][sl] = np.nanmean(masked, axis=1)
                    out["std"][sl] = np.nanstd(masked, axis=1)
                    out["min"][sl] = np.nanmin(masked, axis=1)
                    out["max"][sl] = np.nanmax(masked, axis=1)
                continue
        out["mean"][sl] = block.mean(axis=1)
        out["std"][sl] = block.std(axis=1)
        out["min"][sl] = block.min(axis=1)
        out["max"][sl] = block.max(axis=1)
    return out


def _shape_columns(x: np.ndarray) -> tuple[int, int, int]:
    """(height, width, channels) of an NHWC array; a missing channel axis reads as channels=0, so it fails."""
    dims = list(x.shape[1:]) + [0] * max(0, 3 - (x.ndim - 1))
    if x.ndim - 1 > 3:  # extra axes: fold them into channels so the shape check flags it
        dims = [dims[0], dims[1], int(np.prod(dims[2:]))]
    return int(dims[0]), int(dims[1]), int(dims[2])


def _read_manifest(data_dir: Path) -> dict:
    manifest = io.read_json(data_dir / "manifest.json")
    for key in ("class_names", "image_shape", "splits"):
        if key not in manifest:
            raise StageError(f"{data_dir / 'manifest.json'}: missing key {key!r}; re-run `mlops ingest`.")
    if len(manifest["image_shape"]) != 3:
        raise StageError(f"{data_dir / 'manifest.json'}: image_shape must be [H, W, C], got {manifest['image_shape']}")
    return manifest


def image_rows(x: np.ndarray, y: np.ndarray, split: str, offset: int = 0) -> pd.DataFrame:
    """One row per image of one array of images (no row_id / cross_split_duplicate columns); len(x) == len(y)."""
    n = len(x)
    h, w, c = _shape_columns(x)
    stats = _image_stats(x)
    return pd.DataFrame({
        "split": split,
        "index": np.arange(offset, offset + n, dtype=np.int64),
        "label": np.asarray(y).astype(np.int64).reshape(n, -1)[:, 0],
        "height": h, "width": w, "channels": c,
        "dtype": str(x.dtype),
        "mean": stats["mean"], "std": stats["std"], "min": stats["min"], "max": stats["max"],
        "non_finite": stats["non_finite"],
        "hash": image_hashes(x),
    })


def build_image_table(data_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Summarise every image of every split into (images_df, classes_df); see the module docstring."""
    data_dir = Path(data_dir)
    manifest = _read_manifest(data_dir)
    class_names = list(manifest["class_names"])
    n_classes = len(class_names)

    parts: list[pd.DataFrame] = []
    for split in SPLITS:
        offset = 0
        for _, x, y in _iter_shards(data_dir, split):
            n = len(x)
            if n == 0:
                continue
            parts.append(image_rows(x, y, split, offset))
            offset += n

    columns = ["row_id", "split", "index", "label", "height", "width", "channels", "dtype", "mean", "std",
               "min", "max", "non_finite", "hash", "cross_split_duplicate"]
    if parts:
        images = pd.concat(parts, ignore_index=True)
        images["cross_split_duplicate"] = images.groupby("hash", sort=False)["split"].transform("nunique").gt(1)
    else:
        dtypes = {"split": str, "index": np.int64, "label": np.int64, "height": np.int64, "width": np.int64,
                  "channels": np.int64, "dtype": str, "mean": float, "std": float, "min": float, "max": float,
                  "non_finite": bool, "hash": str, "cross_split_duplicate": bool}
        images = pd.DataFrame({c: pd.Series(dtype=t) for c, t in dtypes.items()})
    images.insert(0, "row_id", np.arange(len(images), dtype=np.int64))
    images = images[columns]

    rows = []
    for split in SPLITS:
        labels = images.loc[images["split"] == split, "label"].to_numpy()
        if split == "stream" and len(labels) == 0:
            continue
        total = len(labels)
        in_range = labels[(labels >= 0) & (labels < n_classes)]
        counts = np.bincount(in_range, minlength=n_classes) if n_classes else np.zeros(0, np.int64)
        for label, count in enumerate(counts):
            fraction = count / total if total else 0.0
            rows.append({"split": split, "label": label, "class_name": class_names[label], "count": int(count),
                         "fraction": float(fraction), "ratio_to_uniform": float(fraction * n_classes)})
    classes = pd.DataFrame(rows, columns=["split", "label", "class_name", "count", "fraction", "ratio_to_uniform"])
    classes.insert(0, "row_id", np.arange(len(classes), dtype=np.int64))
    return images, classes


def _split_table(images: pd.DataFrame, manifest: dict) -> pd.DataFrame:
    counts = images["split"].value_counts()
    rows = [{"split": s, "count": int(counts.get(s, 0)),
             "manifest_count": int(manifest["splits"].get(s, {}).get("count", -1))} for s in REQUIRED_SPLITS]
    df = pd.DataFrame(rows)
    df.insert(0, "row_id", np.arange(len(df), dtype=np.int64))
    return df


# --------------------------------------------------------------------------------------------- suite

def image_expectations(cfg: ValidateConfig, n_classes: int, image_shape) -> list:
    """The per-image expectations (labels, shape, dtype, non-finite, pixel stats): valid for any batch of images."""
    _quiet_gx()
    import great_expectations.expectations as gxe

    h, w, c = (int(v) for v in image_shape)
    lo, hi = cfg.pixel_mean_range
    return [
        gxe.ExpectColumnValuesToBeBetween(column="label", min_value=0, max_value=n_classes - 1,
                                          description=f"labels are class ids 0..{n_classes - 1}"),
        gxe.ExpectColumnValuesToBeInSet(column="height", value_set=[h], description=f"image height is {h}"),
        gxe.ExpectColumnValuesToBeInSet(column="width", value_set=[w], description=f"image width is {w}"),
        gxe.ExpectColumnValuesToBeInSet(column="channels", value_set=[c], description=f"image channels is {c}"),
        gxe.ExpectColumnValuesToBeInSet(column="dtype", value_set=["uint8"], description="pixels are uint8"),
        gxe.ExpectColumnValuesToBeInSet(column="non_finite", value_set=[False],
                                        description="no NaN/inf pixels"),
        gxe.ExpectColumnValuesToBeBetween(column="mean", min_value=lo, max_value=hi, mostly=cfg.mostly,
                                          description=f"per-image mean pixel in [{lo}, {hi}] (not blank)"),
        gxe.ExpectColumnValuesToBeBetween(column="std", min_value=cfg.min_pixel_std, mostly=cfg.mostly,
                                          description=f"per-image pixel std >= {cfg.min_pixel_std} (not constant)"),
    ]


def build_suite(cfg: ValidateConfig, manifest: dict) -> dict[str, list]:
    """Expectations per table name ({"images": [...], "classes": [...], "splits": [...]})."""
    _quiet_gx()
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    n_classes = len(manifest["class_names"])
    imb = cfg.max_class_imbalance
    images = image_expectations(cfg, n_classes, manifest["image_shape"]) + [
        gxe.ExpectColumnValuesToBeInSet(column="cross_split_duplicate", value_set=[False],
                                        description="no image appears in two splits (leakage)"),
        gxe.ExpectColumnDistinctValuesToContainSet(column="label", value_set=list(range(n_classes)),
                                                   row_condition=Column("split") == "train",
                                                   description="every class appears in train"),
    ]
    classes = [
        gxe.ExpectColumnValuesToBeBetween(column="ratio_to_uniform", min_value=round(1 / imb, 6), max_value=imb,
                                          description=f"class balance: fraction within 1/{imb}..{imb}x uniform"),
    ]
    splits = [
        gxe.ExpectColumnValuesToBeBetween(column="count", min_value=1,
                                          description="train, val and test are non-empty"),
        gxe.ExpectColumnPairValuesToBeEqual(column_A="count", column_B="manifest_count",
                                            description="shard image counts match manifest.json"),
    ]
    return {"images": images, "classes": classes, "splits": splits}


# --------------------------------------------------------------------------------------------- GX run

def _quiet_gx() -> None:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    for name in ("great_expectations", "great_expectations.render", "great_expectations.data_context"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _run_checkpoint(tables: dict[str, pd.DataFrame], suites: dict[str, list], docs_dir: Path | None,
                    partial_count: int) -> dict[str, object]:
    """Validate each table against its expectations (ephemeral context, one checkpoint per table); docs go to docs_dir
    (None: no data docs)."""
    _quiet_gx()
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites={} if docs_dir is None else {"local_site": {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.resolve())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }},
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    ctx = gx.get_context(mode="ephemeral", project_config=config)
    source = ctx.data_sources.add_or_update_pandas("ingested")
    definitions, batch_parameters = [], {}
    for name, df in tables.items():
        bd = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(f"{name}_all")
        suite = ctx.suites.add_or_update(gx.ExpectationSuite(name=f"{name}_suite", expectations=suites[name]))
        definitions.append(ctx.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=f"validate_{name}", data=bd, suite=suite)))
        batch_parameters[name] = {"dataframe": df}

    # A checkpoint passes the same batch_parameters to all its validation definitions, and each table is its own
    # dataframe, so there is one checkpoint per table (all updating the same docs site).
    result_format = {"result_format": "SUMMARY", "unexpected_index_column_names": ["row_id"],
                     "partial_unexpected_count": partial_count}
    results: dict[str, object] = {}
    for name, vd in zip(tables, definitions):
        checkpoint = ctx.checkpoints.add_or_update(gx.Checkpoint(
            name=f"ingested_{name}", validation_definitions=[vd], result_format=result_format,
            actions=[] if docs_dir is None else [gx.checkpoint.UpdateDataDocsAction(name="docs",
                                                                                   site_names=["local_site"])]))
        run = checkpoint.run(batch_parameters=batch_parameters[name])
        (results[name],) = run.run_results.values()
    return results


# --------------------------------------------------------------------------------------------- report

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


def _examples(table: str, df: pd.DataFrame, column: str | None, kwargs: dict, result: dict,
              images: pd.DataFrame, class_names: list[str], limit: int) -> list[dict]:
    """Example offending rows as plain dicts (split, index, label, ..., offending value)."""
    index_list = result.get("partial_unexpected_index_list") or result.get("unexpected_index_list") or []
    row_ids = [item["row_id"] for item in index_list if isinstance(item, dict) and "row_id" in item][:limit]
    if row_ids:
        value_cols = [c for c in (kwargs.get("column"), kwargs.get("column_A"), kwargs.get("column_B")) if c]
        keep = [c for c in _EXAMPLE_COLUMNS[table] if c in df.columns]
        keep += [c for c in value_cols if c not in keep]
        rows = df.set_index("row_id").loc[row_ids, keep].to_dict(orient="records")
        if table == "images" and column == "cross_split_duplicate":
            for row, rid in zip(rows, row_ids):
                h = images.at[rid, "hash"]
                same = images[(images["hash"] == h) & (images["row_id"] != rid)]
                row["also_in"] = [f"{s}:{i}" for s, i in zip(same["split"], same["index"])][:3]
        return [_jsonable(r) for r in rows]
    if "value_set" in kwargs and ("partial_missing_list" in result or isinstance(result.get("observed_value"), list)):
        # distinct-values expectations: GX 1.24 reports missing_count/partial_missing_list (observed_value is None)
        if "partial_missing_list" in result:
            missing = list(result["partial_missing_list"])[:limit]
        else:
            missing = sorted(set(kwargs["value_set"]) - set(result["observed_value"]))[:limit]
        return [{"split": "train", "label": v,
                 "class_name": class_names[v] if isinstance(v, int) and 0 <= v < len(class_names) else None,
                 "count": 0} for v in missing]
    return []


def _failures(results: dict[str, object], tables: dict[str, pd.DataFrame], class_names: list[str],
              limit: int) -> list[dict]:
    failures = []
    for table, suite_result in results.items():
        for r in suite_result.results:
            if r.success:
                continue
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
                "examples": _examples(table, tables[table], column, kwargs, result, tables["images"],
                                      class_names, limit),
            }
            if result.get("observed_value") is not None:
                entry["observed_value"] = _jsonable(result["observed_value"])
            if entry["unexpected_count"] is None and "missing_count" in result:
                entry["unexpected_count"] = result["missing_count"]  # classes absent, for distinct-values checks
            exc = (r.exception_info or {})
            if exc.get("raised_exception"):
                entry["exception"] = str(exc.get("exception_message"))
            failures.append(_jsonable(entry))
    return failures


def _format_failure(f: dict) -> list[str]:
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
    for ex in f["examples"]:
        lines.append("      " + " ".join(f"{k}={v}" for k, v in ex.items()))
    return lines


def check_tables(tables: dict[str, pd.DataFrame], suites: dict[str, list], class_names: list[str],
                 example_rows: int) -> dict:
    """Validate in-memory tables (each with a row_id column) without data docs; return success, statistics,
    failures (as in the report) and `lines`, the formatted failure lines. Used for single incoming batches."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = _run_checkpoint(tables, suites, None, partial_count=max(example_rows, 20))
    evaluated = sum(len(r.results) for r in results.values())
    successful = sum(1 for r in results.values() for e in r.results if e.success)
    failures = _failures(results, tables, list(class_names), example_rows)
    return {
        "success": not failures,
        "statistics": {"evaluated_expectations": evaluated, "successful_expectations": successful,
                       "unsuccessful_expectations": evaluated - successful},
        "failures": failures,
        "lines": [line for f in failures for line in _format_failure(f)],
    }


# --------------------------------------------------------------------------------------------- stage

def run(cfg: ValidateConfig, data_dir: str | Path, report_path: str | Path, docs_dir: str | Path) -> dict:
    """Validate the ingested shards; write report_path (always) and data docs; raise StageError on failure."""
    data_dir, report_path, docs_dir = Path(data_dir), Path(report_path), Path(docs_dir)
    manifest = _read_manifest(data_dir)
    images, classes = build_image_table(data_dir)
    tables = {"images": images, "classes": classes, "splits": _split_table(images, manifest)}
    suites = build_suite(cfg, manifest)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with io.atomic_dir(docs_dir) as tmp_docs:
                results = _run_checkpoint(tables, suites, tmp_docs, partial_count=max(cfg.example_rows, 20))
    except Exception as exc:  # GX itself broke: still leave a report saying so, then surface the real error
        io.write_json(report_path, {"success": False, "rows": int(len(images)), "error": f"{type(exc).__name__}: {exc}",
                                    "statistics": {}, "failures": [], "manifest_checksum": manifest.get("checksum")})
        raise

    evaluated = sum(len(r.results) for r in results.values())
    successful = sum(1 for r in results.values() for e in r.results if e.success)
    failures = _failures(results, tables, list(manifest["class_names"]), cfg.example_rows)
    report = {
        "success": not failures,
        "rows": int(len(images)),
        "statistics": {"evaluated_expectations": evaluated, "successful_expectations": successful,
                       "unsuccessful_expectations": evaluated - successful},
        "split_counts": {s: int(n) for s, n in images["split"].value_counts().items()},
        "failures": failures,
        "manifest_checksum": manifest.get("checksum"),
        "docs": str(docs_dir / "index.html"),
    }
    io.write_json(report_path, report)
    if failures:
        lines = [f"data validation failed: {len(failures)} of {evaluated} expectations failed on "
                 f"{len(images)} images in {data_dir}:"]
        for f in failures:
            lines.extend(_format_failure(f))
        lines.append(f"report: {report_path}  data docs: {docs_dir / 'index.html'}")
        raise StageError("\n".join(lines))
    return report

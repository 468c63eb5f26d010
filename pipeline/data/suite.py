"""The Great Expectations 1.x suite over the validation tables (pipeline/data/tables.py), and its runner.

`image_expectations` holds the per-image checks valid for any batch of images (the monitor reuses them on incoming
batches); `build_suite` adds the dataset-wide ones (leakage, every class in train, class balance, split counts).
`run_checkpoint` validates in-memory tables in an ephemeral GX context, optionally building data docs;
`check_tables` does it without docs and summarises the result. great_expectations is imported inside functions.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core.config import ValidateConfig
from pipeline.data import report

if TYPE_CHECKING:
    import pandas as pd


def quiet_gx() -> None:
    """Turn off GX analytics and its chatty loggers (call before importing great_expectations)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    for name in ("great_expectations", "great_expectations.render", "great_expectations.data_context"):
        logging.getLogger(name).setLevel(logging.ERROR)


# --------------------------------------------------------------------------------------------- suite


def image_expectations(cfg: ValidateConfig, n_classes: int, image_shape) -> list:
    """The per-image expectations (labels, shape, dtype, non-finite, pixel stats): valid for any batch of images."""
    quiet_gx()
    import great_expectations.expectations as gxe

    h, w, c = (int(v) for v in image_shape)
    lo, hi = cfg.pixel_mean_range
    return [
        gxe.ExpectColumnValuesToBeBetween(
            column="label", min_value=0, max_value=n_classes - 1, description=f"labels are class ids 0..{n_classes - 1}"
        ),
        gxe.ExpectColumnValuesToBeInSet(column="height", value_set=[h], description=f"image height is {h}"),
        gxe.ExpectColumnValuesToBeInSet(column="width", value_set=[w], description=f"image width is {w}"),
        gxe.ExpectColumnValuesToBeInSet(column="channels", value_set=[c], description=f"image channels is {c}"),
        gxe.ExpectColumnValuesToBeInSet(column="dtype", value_set=["uint8"], description="pixels are uint8"),
        gxe.ExpectColumnValuesToBeInSet(column="non_finite", value_set=[False], description="no NaN/inf pixels"),
        gxe.ExpectColumnValuesToBeBetween(
            column="mean",
            min_value=lo,
            max_value=hi,
            mostly=cfg.mostly,
            description=f"per-image mean pixel in [{lo}, {hi}] (not blank)",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="std",
            min_value=cfg.min_pixel_std,
            mostly=cfg.mostly,
            description=f"per-image pixel std >= {cfg.min_pixel_std} (not constant)",
        ),
    ]


def build_suite(cfg: ValidateConfig, manifest: dict) -> dict[str, list]:
    """Expectations per table name ({"images": [...], "classes": [...], "splits": [...]})."""
    quiet_gx()
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    n_classes = len(manifest["class_names"])
    imb = cfg.max_class_imbalance
    images = [
        *image_expectations(cfg, n_classes, manifest["image_shape"]),
        gxe.ExpectColumnValuesToBeInSet(
            column="cross_split_duplicate", value_set=[False], description="no image appears in two splits (leakage)"
        ),
        gxe.ExpectColumnDistinctValuesToContainSet(
            column="label",
            value_set=list(range(n_classes)),
            row_condition=Column("split") == "train",
            description="every class appears in train",
        ),
    ]
    classes = [
        gxe.ExpectColumnValuesToBeBetween(
            column="ratio_to_uniform",
            min_value=round(1 / imb, 6),
            max_value=imb,
            description=f"class balance: fraction within 1/{imb}..{imb}x uniform",
        ),
    ]
    splits = [
        gxe.ExpectColumnValuesToBeBetween(column="count", min_value=1, description="train, val and test are non-empty"),
        gxe.ExpectColumnPairValuesToBeEqual(
            column_A="count", column_B="manifest_count", description="shard image counts match manifest.json"
        ),
    ]
    return {"images": images, "classes": classes, "splits": splits}


# --------------------------------------------------------------------------------------------- GX run


def _context(docs_dir: Path | None):
    """An ephemeral GX context, with a local data docs site in docs_dir (None: no data docs)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites={}
        if docs_dir is None
        else {
            "local_site": {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_dir.resolve()),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            }
        },
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def run_checkpoint(
    tables: dict[str, pd.DataFrame], suites: dict[str, list], docs_dir: Path | None, partial_count: int
) -> dict[str, object]:
    """Validate each table against its expectations (ephemeral context, one checkpoint per table); docs go to docs_dir
    (None: no data docs). Returns the GX validation result per table name.
    """
    quiet_gx()
    import great_expectations as gx

    ctx = _context(docs_dir)
    source = ctx.data_sources.add_or_update_pandas("ingested")
    definitions = {}
    for name in tables:
        bd = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(f"{name}_all")
        suite = ctx.suites.add_or_update(gx.ExpectationSuite(name=f"{name}_suite", expectations=suites[name]))
        definitions[name] = ctx.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=f"validate_{name}", data=bd, suite=suite)
        )

    # A checkpoint passes the same batch_parameters to all its validation definitions, and each table is its own
    # dataframe, so there is one checkpoint per table (all updating the same docs site).
    result_format = {
        "result_format": "SUMMARY",
        "unexpected_index_column_names": ["row_id"],
        "partial_unexpected_count": partial_count,
    }
    results: dict[str, object] = {}
    for name, df in tables.items():
        checkpoint = ctx.checkpoints.add_or_update(
            gx.Checkpoint(
                name=f"ingested_{name}",
                validation_definitions=[definitions[name]],
                result_format=result_format,
                actions=[]
                if docs_dir is None
                else [gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=["local_site"])],
            )
        )
        run = checkpoint.run(batch_parameters={"dataframe": df})
        (results[name],) = run.run_results.values()
    return results


def check_tables(
    tables: dict[str, pd.DataFrame], suites: dict[str, list], class_names: list[str], example_rows: int
) -> dict:
    """Validate in-memory tables (each with a row_id column) without data docs; return success, statistics,
    failures (as in the report) and `lines`, the formatted failure lines. Used for single incoming batches.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = run_checkpoint(tables, suites, None, partial_count=max(example_rows, 20))
    failures = report.failures(results, tables, list(class_names), example_rows)
    return {
        "success": not failures,
        "statistics": report.statistics(results),
        "failures": failures,
        "lines": [line for f in failures for line in report.format_failure(f)],
    }

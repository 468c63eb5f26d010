"""Data validation stage: the Great Expectations 1.x suite over per-image tables built from the ingested shards.

The shards are summarised into small pandas tables (pipeline/data/tables.py: images, classes, splits), GX
validates them against the suite (pipeline/data/suite.py), and the report (pipeline/data/report.py) names each
failing expectation with example rows (split, index, label, offending value).

`run` always writes a JSON report (and GX data docs as a static HTML site); on failure it raises StageError
listing the failures. Command: `python -m pipeline.stages.validate` (what dvc.yaml runs) or `mlops validate`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer

from pipeline.core import io
from pipeline.core.command import DEFAULT_PARAMS, ParamsOpt, call, load, path_or
from pipeline.core.config import ValidateConfig
from pipeline.core.errors import StageError
from pipeline.data import report as gx_report, suite, tables


def run(cfg: ValidateConfig, data_dir: str | Path, report_path: str | Path, docs_dir: str | Path) -> dict:
    """Validate the ingested shards; write report_path (always) and data docs; raise StageError on failure.

    Reads: `data_dir/manifest.json` and the `{train,val,test,stream}-*.npz` shards.
    Writes: `report_path` (JSON: success, rows, statistics, split counts, failures with example rows) and the
    GX data docs site `docs_dir/` (atomically; index.html).
    """
    data_dir, report_path, docs_dir = Path(data_dir), Path(report_path), Path(docs_dir)
    manifest = tables.read_manifest(data_dir)
    images, classes = tables.build_image_table(data_dir)
    checked = {"images": images, "classes": classes, "splits": tables.split_table(images, manifest)}
    suites = suite.build_suite(cfg, manifest)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with io.atomic_dir(docs_dir) as tmp_docs:
                results = suite.run_checkpoint(checked, suites, tmp_docs, partial_count=max(cfg.example_rows, 20))
    except Exception as exc:  # GX itself broke: still leave a report saying so, then surface the real error
        io.write_json(
            report_path,
            {
                "success": False,
                "rows": len(images),
                "error": f"{type(exc).__name__}: {exc}",
                "statistics": {},
                "failures": [],
                "manifest_checksum": manifest.get("checksum"),
            },
        )
        raise

    statistics = gx_report.statistics(results)
    failures = gx_report.failures(results, checked, list(manifest["class_names"]), cfg.example_rows)
    report = {
        "success": not failures,
        "rows": len(images),
        "statistics": statistics,
        "split_counts": {s: int(n) for s, n in images["split"].value_counts().items()},
        "failures": failures,
        "manifest_checksum": manifest.get("checksum"),
        "docs": str(docs_dir / "index.html"),
    }
    io.write_json(report_path, report)
    if failures:
        lines = [
            (
                f"data validation failed: {len(failures)} of {statistics['evaluated_expectations']} expectations "
                f"failed on {len(images)} images in {data_dir}:"
            )
        ]
        lines += [line for f in failures for line in gx_report.format_failure(f)]
        lines.append(f"report: {report_path}  data docs: {docs_dir / 'index.html'}")
        raise StageError("\n".join(lines))
    return report


def command(
    params: ParamsOpt = DEFAULT_PARAMS,
    data: Annotated[Path | None, typer.Option(help="Ingested shards directory (default: paths.ingested).")] = None,
    report: Annotated[
        Path | None, typer.Option(help="JSON report to write (default: paths.validation_report).")
    ] = None,
    docs: Annotated[
        Path | None, typer.Option(help="Great Expectations data docs directory (default: paths.data_docs).")
    ] = None,
) -> None:
    """Run the Great Expectations suite; exit non-zero naming failing expectations and example rows."""
    cfg = load(params)
    report = path_or(report, cfg.paths.validation_report)
    result = call(
        run,
        cfg.validate_,
        data_dir=path_or(data, cfg.paths.ingested),
        report_path=report,
        docs_dir=path_or(docs, cfg.paths.data_docs),
    )
    typer.echo(
        f"validation passed: {result['statistics']['successful_expectations']} expectations on "
        f"{result['rows']} images -> {report}"
    )


if __name__ == "__main__":
    typer.run(command)

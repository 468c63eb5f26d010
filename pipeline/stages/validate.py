"""Data validation stage: the Great Expectations 1.x suite over per-image tables built from the ingested shards.

The shards are summarised into small pandas tables (pipeline/data/tables.py: images, classes, splits), GX
validates them against the suite (pipeline/data/suite.py), and the report (pipeline/data/report.py) names each
failing expectation with example rows (split, index, label, offending value).

`run` always writes a JSON report (and GX data docs as a static HTML site); on failure it raises StageError
listing the failures. The report's `skipped_files` section counts and lists the source files ingest left out
(`ingest.on_bad_file: skip`, from manifest.json).
Command: `python -m pipeline.stages.validate` (what dvc.yaml runs) or `mlops validate`.
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


def _run_suite(cfg: ValidateConfig, checked: dict, suites: dict, docs_dir: Path, report_path: Path, manifest: dict):
    """Run the GX checkpoint (data docs into `docs_dir`, atomically); if GX itself breaks, report that, re-raise."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with io.atomic_dir(docs_dir) as tmp_docs:
                return suite.run_checkpoint(checked, suites, tmp_docs, partial_count=max(cfg.example_rows, 20))
    except Exception as exc:  # GX itself broke: still leave a report saying so, then surface the real error
        io.write_json(
            report_path,
            {
                "success": False,
                "rows": len(checked["images"]),
                "error": f"{type(exc).__name__}: {exc}",
                "statistics": {},
                "failures": [],
                "manifest_checksum": manifest.get("checksum"),
            },
        )
        raise


def _failure_message(failures: list[dict], statistics: dict, n_images: int, data_dir: Path, report: dict) -> str:
    """The StageError text: every failed expectation with its example rows, then where the report is."""
    evaluated = statistics["evaluated_expectations"]
    head = f"data validation failed: {len(failures)} of {evaluated} expectations failed on {n_images} images in "
    lines = [f"{head}{data_dir}:"]
    lines += [line for f in failures for line in gx_report.format_failure(f)]
    lines += gx_report.format_skipped(report["skipped_files"])
    lines.append(f"report: {report['report']}  data docs: {report['docs']}")
    return "\n".join(lines)


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
    results = _run_suite(cfg, checked, suite.build_suite(cfg, manifest), docs_dir, report_path, manifest)
    statistics = gx_report.statistics(results)
    failures = gx_report.failures(results, checked, list(manifest["class_names"]), cfg.example_rows)
    report = {
        "success": not failures,
        "rows": len(images),
        "statistics": statistics,
        "split_counts": {s: int(n) for s, n in images["split"].value_counts().items()},
        "failures": failures,
        "skipped_files": gx_report.skipped_files(manifest),
        "manifest_checksum": manifest.get("checksum"),
        "docs": str(docs_dir / "index.html"),
    }
    io.write_json(report_path, report)
    if failures:
        raise StageError(
            _failure_message(failures, statistics, len(images), data_dir, {**report, "report": report_path})
        )
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
    for line in gx_report.format_skipped(result["skipped_files"]):
        typer.echo(line)


if __name__ == "__main__":
    typer.run(command)

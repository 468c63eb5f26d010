"""`mlops`: the project's command line — one command per pipeline stage and per operator verb.

The stage commands are the stages' own (`pipeline.stages.<name>.command`, also run by dvc.yaml as
`python -m pipeline.stages.<name>`): one code path whichever way a stage is started. Operator verbs (simulate,
deploy, serve, promote, rollback, status) are thin wrappers here. Heavy libraries (tensorflow,
great_expectations, mlflow) are imported inside functions, so `mlops --help` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from pipeline.core.command import DEFAULT_PARAMS, ParamsOpt, call, fail, load, path_or
from pipeline.core.config import Params
from pipeline.stages import compress, evaluate, ingest, preprocess, register, train, validate

app = typer.Typer(help="Image-classification MLOps pipeline (DVC stages, MLflow registry).", no_args_is_help=True)

for _stage in (ingest, validate, preprocess, train, compress, evaluate, register):
    app.command(_stage.__name__.rsplit(".", 1)[-1])(_stage.command)


@app.command()
def simulate(
    kind: Annotated[str, typer.Option(help="Drift: brightness|contrast|noise|blur|label-shift|none.")] = "none",
    severity: Annotated[float, typer.Option(help="Drift strength in [0, 1]; 0 = unchanged.")] = 0.5,
    batches: Annotated[int, typer.Option(help="Number of batches to write.")] = 1,
    params: ParamsOpt = DEFAULT_PARAMS,
    data: Annotated[
        Path | None,
        typer.Option(help="Ingested shards directory, its stream split is the source (default: paths.ingested)."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Incoming directory (default: paths.incoming).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per batch (default: monitor.batch_size).")] = None,
    seed: Annotated[int | None, typer.Option(help="Noise/label-shift seed (default: params.yaml seed).")] = None,
) -> None:
    """Write labelled incoming batches from the held-out stream split, with simulated drift, for the monitor."""
    from pipeline.core import io
    from pipeline.monitoring import simulate as simulator

    if kind not in simulator.KINDS:
        fail(f"--kind must be one of {', '.join(simulator.KINDS)}, got {kind!r}")
    if not 0.0 <= severity <= 1.0:
        fail(f"--severity must lie in [0, 1], got {severity}")
    if batches < 1 or (batch_size is not None and batch_size < 1):
        fail("--batches and --batch-size must be >= 1")
    cfg = load(params)
    data, out = path_or(data, cfg.paths.ingested), path_or(out, cfg.paths.incoming)
    manifest = call(io.read_json, data / "manifest.json")
    x, y = call(io.read_split, data, "stream")
    paths = call(
        simulator.write_batches,
        x,
        y,
        out,
        kind,
        severity,
        batch_size or cfg.monitor.batch_size,
        batches,
        cfg.seed if seed is None else seed,
        num_classes=len(manifest["class_names"]),
    )
    for path in paths:
        typer.echo(f"wrote {path} ({kind}, severity {severity:g})")


@app.command()
def deploy(params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """Publish the registry's `champion` to S3 (immutable release + pointer flip); no-op if already live."""
    from pipeline.delivery import releases

    cfg = load(params)
    result = call(releases.publish_champion, cfg)
    if result.get("skipped"):
        typer.echo(
            f"{cfg.register_.model_name} v{result['version']} already deployed: {result['release']} "
            f"(pointer {result['pointer']})"
        )
    else:
        typer.echo(
            f"deployed {cfg.register_.model_name} v{result['version']} -> {result['release']} "
            f"(pointer {result['pointer']})"
        )


@app.command()
def serve(
    params: ParamsOpt = DEFAULT_PARAMS,
    source: Annotated[
        str,
        typer.Option(help="Where the model comes from: s3 (the deployed pointer) or registry (MLflow champion alias)."),
    ] = "s3",
    host: Annotated[str | None, typer.Option(help="Bind host (default: deploy.serve_host).")] = None,
    port: Annotated[int | None, typer.Option(help="Bind port (default: deploy.serve_port).")] = None,
) -> None:
    """Serve the champion over HTTP (/health, /predict, /reload), hot-reloading when it changes."""
    from pipeline.delivery import server

    if source not in ("s3", "registry"):
        fail(f"--source must be 's3' or 'registry', got {source!r}")
    cfg = load(params)
    call(server.serve, cfg, source, host, port)


def _publish(cfg: Params) -> None:
    """Publish the registry's champion to S3 (after a promotion decision or a rollback)."""
    from pipeline.delivery import releases

    result = call(releases.publish_champion, cfg)
    typer.echo(f"published v{result['version']}" + (" (already deployed)" if result.get("skipped") else ""))


@app.command()
def promote(
    approve: Annotated[bool, typer.Option("--approve/--reject", help="Approve (champion ← challenger) or reject.")],
    by: Annotated[str, typer.Option("--by", help="Approver name, recorded in the audit trail.")],
    reason: Annotated[str, typer.Option("--reason", help="Why; recorded in the audit trail.")] = "",
    params: ParamsOpt = DEFAULT_PARAMS,
    publish: Annotated[bool, typer.Option(help="Publish the new champion to S3 after approval.")] = False,
) -> None:
    """Decide on the current challenger (same decision as the promotion flow's approval form)."""
    from pipeline.registry import promotion

    cfg = load(params)
    name = cfg.register_.model_name
    if approve:
        typer.echo(promotion.comparison_markdown(call(promotion.compare, name)))
    record = call(promotion.approve if approve else promotion.reject, name, by, reason)
    typer.echo(f"{record['action']} by {record['by']} at {record['at']}: {record['versions']}")
    if approve and publish:
        _publish(cfg)


@app.command()
def rollback(
    by: Annotated[str, typer.Option("--by", help="Who rolls back, recorded in the audit trail.")],
    reason: Annotated[str, typer.Option("--reason", help="Why; recorded in the audit trail.")] = "",
    params: ParamsOpt = DEFAULT_PARAMS,
    publish: Annotated[bool, typer.Option(help="Publish the restored champion to S3.")] = False,
) -> None:
    """Champion ← previous (audited); the rolled-back version becomes `previous`."""
    from pipeline.registry import promotion

    cfg = load(params)
    record = call(promotion.rollback, cfg.register_.model_name, by, reason)
    typer.echo(f"rollback by {record['by']} at {record['at']}: {record['versions']}")
    if publish:
        _publish(cfg)


@app.command()
def status(params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """Registry aliases and the audit history of the configured model."""
    from pipeline.registry import promotion

    cfg = load(params)
    name = cfg.register_.model_name
    typer.echo(f"{name}: {call(promotion.aliases, name)}")
    for record in call(promotion.history, name):
        typer.echo(f"  {record['at']} {record['action']:8s} by {record['by']}: {record['versions']} {record['reason']}")


def main() -> None:  # pragma: no cover - console entry
    """Run the `mlops` command line."""
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())

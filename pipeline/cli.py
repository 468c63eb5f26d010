"""`mlops`: the project's command line — one command per pipeline stage and per operator verb.

The stage commands are the stages' own (`pipeline.stages.<name>.command`, also run by dvc.yaml as
`python -m pipeline.stages.<name>`): one code path whichever way a stage is started. Operator verbs (simulate,
deploy, serve, promote, rollback, status) are thin wrappers here. Heavy libraries (tensorflow,
great_expectations, mlflow) are imported inside functions, so `mlops --help` stays fast.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from pipeline.core.command import DEFAULT_PARAMS, ParamsOpt, call, fail, load, path_or
from pipeline.core.config import Params
from pipeline.monitoring import cli as monitoring_cli
from pipeline.stages import compress, evaluate, ingest, preprocess, register, train, validate
from pipeline.versioning import cli as versioning_cli

app = typer.Typer(help="Image-classification MLOps pipeline (DVC stages, MLflow registry).", no_args_is_help=True)

for _stage in (ingest, validate, preprocess, train, compress, evaluate, register):
    app.command(_stage.__name__.rsplit(".", 1)[-1])(_stage.command)
app.command("commit-run")(versioning_cli.commit_run_command)
app.command("reproduce")(versioning_cli.reproduce_command)
app.command("label")(monitoring_cli.label_command)


def _upload_to_inbox(cfg, uri: str, path: Path) -> str:
    """`mlops label --post` into an S3 inbox (pipeline.delivery.inbox; injected: monitoring does not import it)."""
    from pipeline.delivery import inbox

    return inbox.upload(cfg.deploy, uri, [path])[-1]


monitoring_cli.use_uploader(_upload_to_inbox)


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
    out: Annotated[
        Path | None,
        typer.Option(help="Incoming directory (default: the monitor.inbox S3 prefix when set, else paths.incoming)."),
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per batch (default: monitor.batch_size).")] = None,
    seed: Annotated[int | None, typer.Option(help="Noise/label-shift seed (default: params.yaml seed).")] = None,
    unlabelled: Annotated[
        bool, typer.Option(help="Write captured traffic instead: <out>/captured/capture-*.npz (x, request_id; no y).")
    ] = False,
) -> None:
    """Write incoming batches from the held-out stream split, with simulated drift, for the monitor: labelled
    (x, y), or with --unlabelled as the model server captures its traffic (under captured/).
    """
    from pipeline.core import io
    from pipeline.monitoring import simulate as simulator

    if kind not in simulator.KINDS:
        fail(f"--kind must be one of {', '.join(simulator.KINDS)}, got {kind!r}")
    if not 0.0 <= severity <= 1.0:
        fail(f"--severity must lie in [0, 1], got {severity}")
    if batches < 1 or (batch_size is not None and batch_size < 1):
        fail("--batches and --batch-size must be >= 1")
    cfg = load(params)
    to_inbox = out is None and cfg.monitor.inbox is not None
    data, out = path_or(data, cfg.paths.ingested), path_or(out, cfg.paths.incoming)
    if to_inbox:  # written locally first (atomically), then uploaded: the worker may be another machine
        out = Path(tempfile.mkdtemp(prefix="simulate-"))
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
    if unlabelled:
        paths = [simulator.to_captured(path, out / "captured") for path in paths]
    if to_inbox:
        from pipeline.delivery import inbox

        assert cfg.monitor.inbox is not None
        uri = f"{cfg.monitor.inbox.rstrip('/')}/captured" if unlabelled else cfg.monitor.inbox
        written = call(inbox.upload, cfg.deploy, uri, paths)
        shutil.rmtree(out, ignore_errors=True)
    else:
        written = [str(path) for path in paths]
    for where in written:
        typer.echo(f"wrote {where} ({kind}, severity {severity:g})")


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
    alias: Annotated[
        str, typer.Option(help="With --source registry: the alias to serve (e.g. challenger, for a staging server).")
    ] = "champion",
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: deploy.serve_workers).")] = None,
    threads: Annotated[
        int | None, typer.Option(help="Inference threads per worker (default: deploy.serve_threads).")
    ] = None,
    batch_max_images: Annotated[
        int | None, typer.Option(help="Micro-batch size bound (default: deploy.batch_max_images).")
    ] = None,
    batch_max_wait_ms: Annotated[
        float | None, typer.Option(help="Micro-batch gathering wait (default: deploy.batch_max_wait_ms).")
    ] = None,
    no_capture: Annotated[
        bool, typer.Option("--no-capture", help="Record no sample of the answers (default: capture.enabled).")
    ] = False,
) -> None:
    """Serve the champion over HTTP (/health, /predict, /reload, /metrics), hot-reloading when it changes."""
    from pipeline.delivery import server

    if source not in ("s3", "registry"):
        fail(f"--source must be 's3' or 'registry', got {source!r}")
    cfg = load(params)
    overrides = {
        "serve_workers": workers,
        "serve_threads": threads,
        "batch_max_images": batch_max_images,
        "batch_max_wait_ms": batch_max_wait_ms,
    }
    call(server.serve, cfg, source, host, port, alias, capture=not no_capture, **overrides)


def _champion_branch(cfg: Params, remote: str | None) -> None:
    """Move git branch `champion` to the champion's run commit (when this is a git working copy)."""
    from pipeline.versioning.commit import move_champion_branch

    call(move_champion_branch, Path.cwd(), cfg.register_.model_name, remote, typer.echo)


def _publish(cfg: Params) -> None:
    """Publish the registry's champion to S3 (after a promotion decision or a rollback)."""
    from pipeline.delivery import releases

    result = call(releases.publish_champion, cfg)
    typer.echo(f"published v{result['version']}" + (" (already deployed)" if result.get("skipped") else ""))


ByOpt = Annotated[
    str | None,
    typer.Option(
        "--by",
        help="Who decides, recorded in the audit trail. With MLflow auth on it is the MLflow user of "
        "MLFLOW_TRACKING_USERNAME (the default; another name is refused).",
    ),
]


@app.command()
def promote(
    approve: Annotated[bool, typer.Option("--approve/--reject", help="Approve (champion ← challenger) or reject.")],
    by: ByOpt = None,
    reason: Annotated[str, typer.Option("--reason", help="Why; recorded in the audit trail.")] = "",
    params: ParamsOpt = DEFAULT_PARAMS,
    publish: Annotated[bool, typer.Option(help="Publish the new champion to S3 after approval.")] = False,
    remote: versioning_cli.RemoteOpt = None,
) -> None:
    """Decide on the current challenger (same decision as the promotion flow's approval form).

    With MLflow auth on, the decision is applied with your own MLflow credentials (MLFLOW_TRACKING_USERNAME /
    MLFLOW_TRACKING_PASSWORD) and needs MANAGE on the registered model; a refusal changes nothing and is audited.
    """
    from pipeline.registry import approvers, promotion

    cfg = load(params)
    name = cfg.register_.model_name
    action = "approve" if approve else "reject"
    who = call(approvers.decider, name, by, action, reason)
    if approve:
        typer.echo(promotion.comparison_markdown(call(promotion.compare, name)))
    decide = promotion.approve if approve else promotion.reject
    record = call(approvers.apply, name, who, action, reason, decide, name, who, reason)
    typer.echo(f"{record['action']} by {record['by']} at {record['at']}: {record['versions']}")
    if approve:
        _champion_branch(cfg, remote)
    if approve and publish:
        _publish(cfg)


@app.command()
def rollback(
    by: ByOpt = None,
    reason: Annotated[str, typer.Option("--reason", help="Why; recorded in the audit trail.")] = "",
    params: ParamsOpt = DEFAULT_PARAMS,
    publish: Annotated[bool, typer.Option(help="Publish the restored champion to S3.")] = False,
    remote: versioning_cli.RemoteOpt = None,
) -> None:
    """Champion ← previous (audited); the rolled-back version becomes `previous`. With MLflow auth on: applied
    with your own MLflow credentials, needs MANAGE on the registered model (as `promote`).
    """
    from pipeline.registry import approvers, promotion

    cfg = load(params)
    name = cfg.register_.model_name
    who = call(approvers.decider, name, by, "rollback", reason)
    record = call(approvers.apply, name, who, "rollback", reason, promotion.rollback, name, who, reason)
    typer.echo(f"rollback by {record['by']} at {record['at']}: {record['versions']}")
    _champion_branch(cfg, remote)
    if publish:
        _publish(cfg)


@app.command()
def predict(
    paths: Annotated[list[Path], typer.Argument(help="Image files, or folders searched recursively.")],
    params: ParamsOpt = DEFAULT_PARAMS,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="CSV to write (path,label,probability,error); '-' = stdout.")
    ] = Path("predictions.csv"),
    alias: Annotated[str | None, typer.Option(help="Registry alias to use (default: champion).")] = None,
    version: Annotated[int | None, typer.Option(help="Registry version to use instead of an alias.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per batch (default: evaluate.batch_size).")] = None,
) -> None:
    """Classify image files with a registered model into a CSV; exit 1 when some files failed (rows still written)."""
    from pipeline.delivery import predict as predictor

    if alias is not None and version is not None:
        fail("give --alias or --version, not both")
    cfg = load(params)
    batch = cfg.evaluate.batch_size if batch_size is None else batch_size
    pinned = None if version is None else str(version)
    done = call(predictor.run, cfg.register_.model_name, paths, output, alias=alias, version=pinned, batch_size=batch)
    where = "stdout" if output == predictor.STDOUT else str(output)
    ok = f"{done.files - done.failed}/{done.files}"
    typer.echo(f"{done.model.model_name} v{done.model.version}: {ok} files classified -> {where}", err=True)
    if done.failed:
        typer.secho(f"{done.failed} file(s) failed: see the error column of {where}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1)


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

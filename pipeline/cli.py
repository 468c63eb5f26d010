"""`mlops`: one command per pipeline stage. Thin: parse options, load config, call the stage function.

Heavy libraries (tensorflow, great_expectations, mlflow) are imported inside the stage modules' functions,
so `mlops --help` stays instant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from pipeline.core.config import ConfigError, Params, load_params
from pipeline.core.errors import StageError

app = typer.Typer(help="Image-classification MLOps pipeline (DVC stages, MLflow registry).", no_args_is_help=True)

ParamsOpt = Annotated[Path, typer.Option("--params", help="params.yaml to read (the single source of parameters).")]


def _load(params: Path) -> Params:
    try:
        return load_params(params)
    except ConfigError as exc:
        _fail(str(exc))


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _run(fn, *args, **kwargs):
    """Call a stage function, turning expected failures into a clear message and exit code 2."""
    try:
        return fn(*args, **kwargs)
    except (StageError, FileNotFoundError, ConfigError) as exc:
        _fail(str(exc))
    except Exception as exc:
        message = _mlflow_unreachable(exc)
        if message is None:
            raise
        _fail(message)


def _mlflow_unreachable(exc: Exception) -> str | None:
    """A clear message when `exc` is MLflow failing to reach its tracking server; None for anything else."""
    errors = sys.modules.get("mlflow.exceptions")  # only if MLflow is in use (never imported just for this)
    if errors is None or not isinstance(exc, errors.MlflowException):
        return None
    text = str(exc)
    if not text.startswith("API request to") or not any(
            s in text for s in ("Max retries exceeded", "Connection refused", "timed out", "ConnectionError",
                                "Failed to establish", "RemoteDisconnected", "Connection aborted")):
        return None
    import os

    uri = os.environ.get("MLFLOW_TRACKING_URI", "?")
    reason = next((r for r in ("Connection refused", "timed out", "Name or service not known", "Connection aborted")
                   if r in text), "connection failed")
    return (f"cannot reach the MLflow tracking server at {uri} ({reason}). Start it, or point MLFLOW_TRACKING_URI "
            f"at a running server (unset it to use the embedded store mlflow/mlflow.db), then rerun.")


@app.command()
def ingest(
    params: ParamsOpt = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="Directory for shards + manifest.json.")] = Path("data/ingested"),
) -> None:
    """Read the configured dataset into seeded train/val/test/stream shards with a checksummed manifest."""
    from pipeline.stages import ingest as stage

    cfg = _load(params)
    manifest = _run(stage.run, cfg.ingest, seed=cfg.seed, out_dir=out, accepted_dir=Path(cfg.monitor.accepted_dir))
    counts = {k: v["count"] for k, v in manifest["splits"].items()}
    typer.echo(f"ingested {cfg.ingest.dataset}: {counts} -> {out}")


@app.command()
def validate(
    params: ParamsOpt = Path("params.yaml"),
    data: Annotated[Path, typer.Option(help="Ingested shards directory.")] = Path("data/ingested"),
    report: Annotated[Path, typer.Option(help="JSON report to write.")] = Path("reports/validation.json"),
    docs: Annotated[Path, typer.Option(help="Great Expectations data docs directory.")] = Path("reports/data_docs"),
) -> None:
    """Run the Great Expectations suite; exit non-zero naming failing expectations and example rows."""
    from pipeline.stages import validate as stage

    cfg = _load(params)
    result = _run(stage.run, cfg.validate_, data_dir=data, report_path=report, docs_dir=docs)
    typer.echo(f"validation passed: {result['statistics']['successful_expectations']} expectations on "
               f"{result['rows']} images -> {report}")


@app.command()
def preprocess(
    params: ParamsOpt = Path("params.yaml"),
    data: Annotated[Path, typer.Option(help="Ingested shards directory.")] = Path("data/ingested"),
    out: Annotated[Path, typer.Option(help="Directory for training-ready shards + stats.json.")] = Path("data/prepared"),
) -> None:
    """Convert to the model's channel layout and record normalisation statistics."""
    from pipeline.stages import preprocess as stage

    cfg = _load(params)
    stats = _run(stage.run, cfg.preprocess, data_dir=data, out_dir=out)
    typer.echo(f"prepared shards {stats['image_shape']} mean={stats['mean']} std={stats['std']} -> {out}")


@app.command()
def train(
    params: ParamsOpt = Path("params.yaml"),
    data: Annotated[Path, typer.Option(help="Prepared shards directory.")] = Path("data/prepared"),
    model: Annotated[Path, typer.Option(help="Trained Keras model to write.")] = Path("models/model.keras"),
    metrics: Annotated[Path, typer.Option(help="Metrics JSON to write.")] = Path("metrics/train.json"),
    plots: Annotated[Path, typer.Option(help="Directory for history CSV and curve PNG.")] = Path("plots/train"),
    backup: Annotated[Path, typer.Option(help="BackupAndRestore dir; a killed run resumes from it.")] = Path(".cache/train_backup"),
) -> None:
    """Train the configured Keras 3 model (resumable, seeded, GPU-aware)."""
    from pipeline.stages import train as stage

    cfg = _load(params)
    result = _run(stage.run, cfg.train, seed=cfg.seed, data_dir=data, model_path=model,
                  metrics_path=metrics, plots_dir=plots, backup_dir=backup)
    typer.echo(f"trained {cfg.train.model}: val_accuracy={result['val_accuracy']:.4f} -> {model}")


@app.command()
def compress(
    params: ParamsOpt = Path("params.yaml"),
    data: Annotated[Path, typer.Option(help="Prepared shards directory.")] = Path("data/prepared"),
    model: Annotated[Path, typer.Option(help="Trained Keras model.")] = Path("models/model.keras"),
    out: Annotated[Path, typer.Option(help="Directory for pruned model and .tflite variants.")] = Path("models/compressed"),
    metrics: Annotated[Path, typer.Option(help="Metrics JSON to write.")] = Path("metrics/compress.json"),
) -> None:
    """Magnitude-prune and fine-tune, then convert to TFLite fp32 / fp16 / dynamic / int8."""
    from pipeline.stages import compress as stage

    cfg = _load(params)
    result = _run(stage.run, cfg.compress, seed=cfg.seed, data_dir=data, model_path=model,
                  out_dir=out, metrics_path=metrics)
    for name, info in result["variants"].items():
        typer.echo(f"{name:8s} {info['bytes']:>10,d} B  gz {info['gzip_bytes']:>10,d} B")


@app.command()
def evaluate(
    params: ParamsOpt = Path("params.yaml"),
    data: Annotated[Path, typer.Option(help="Prepared shards directory.")] = Path("data/prepared"),
    model: Annotated[Path, typer.Option(help="Trained Keras model.")] = Path("models/model.keras"),
    compressed: Annotated[Path, typer.Option(help="Directory of .tflite variants.")] = Path("models/compressed"),
    metrics: Annotated[Path, typer.Option(help="Metrics JSON to write.")] = Path("metrics/evaluate.json"),
    report: Annotated[Path, typer.Option(help="Decision report JSON (blessed + reasons).")] = Path("reports/evaluation.json"),
    plots: Annotated[Path, typer.Option(help="Directory for confusion matrix PNG/CSV.")] = Path("plots/evaluate"),
) -> None:
    """Score every variant on the test split, compare with the registry champion, write the blessing decision."""
    from pipeline.stages import evaluate as stage

    cfg = _load(params)
    result = _run(stage.run, cfg.evaluate, registry=cfg.register_, data_dir=data, model_path=model,
                  compressed_dir=compressed, metrics_path=metrics, report_path=report, plots_dir=plots)
    decision = result["decision"]
    typer.echo(f"{cfg.evaluate.deploy_variant} accuracy={result['variants'][cfg.evaluate.deploy_variant]['accuracy']:.4f} "
               f"blessed={decision['blessed']}")
    for reason in decision["reasons"]:
        typer.echo(f"  [{'ok' if reason['passed'] else 'FAIL'}] {reason['check']}: {reason['detail']}")


@app.command()
def register(
    params: ParamsOpt = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="Registration record JSON to write.")] = Path("reports/registration.json"),
) -> None:
    """Log one MLflow run with everything, register a model version; blessed versions get `challenger`."""
    from pipeline.stages import register as stage

    cfg = _load(params)
    record = _run(stage.run, cfg, params_path=params, out_path=out)
    typer.echo(f"registered {record['model_name']} v{record['version']} alias={record['alias'] or '-'} "
               f"run={record['run_id']}")


@app.command()
def simulate(
    kind: Annotated[str, typer.Option(help="Drift: brightness|contrast|noise|blur|label-shift|none.")] = "none",
    severity: Annotated[float, typer.Option(help="Drift strength in [0, 1]; 0 = unchanged.")] = 0.5,
    batches: Annotated[int, typer.Option(help="Number of batches to write.")] = 1,
    params: ParamsOpt = Path("params.yaml"),
    data: Annotated[Path, typer.Option(help="Ingested shards directory (its stream split is the source).")] = (
        Path("data/ingested")),
    out: Annotated[Path | None, typer.Option(help="Incoming directory (default: monitor.incoming_dir).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per batch (default: monitor.batch_size).")] = None,
    seed: Annotated[int | None, typer.Option(help="Noise/label-shift seed (default: params.yaml seed).")] = None,
) -> None:
    """Write labelled incoming batches from the held-out stream split, with simulated drift, for the monitor."""
    from pipeline.core import io
    from pipeline.monitoring import simulate as stage

    if kind not in stage.KINDS:
        _fail(f"--kind must be one of {', '.join(stage.KINDS)}, got {kind!r}")
    if not 0.0 <= severity <= 1.0:
        _fail(f"--severity must lie in [0, 1], got {severity}")
    if batches < 1 or (batch_size is not None and batch_size < 1):
        _fail("--batches and --batch-size must be >= 1")
    cfg = _load(params)
    out = out or Path(cfg.monitor.incoming_dir)
    manifest = _run(io.read_json, data / "manifest.json")
    x, y = _run(io.read_split, data, "stream")
    paths = _run(stage.write_batches, x, y, out, kind, severity, batch_size or cfg.monitor.batch_size, batches,
                 cfg.seed if seed is None else seed, num_classes=len(manifest["class_names"]))
    for path in paths:
        typer.echo(f"wrote {path} ({kind}, severity {severity:g})")


@app.command()
def deploy(params: ParamsOpt = Path("params.yaml")) -> None:
    """Publish the registry's `champion` to S3 (immutable release + pointer flip); no-op if already live."""
    from pipeline.delivery import releases as stage

    cfg = _load(params)
    result = _run(stage.publish_champion, cfg)
    if result.get("skipped"):
        typer.echo(f"{cfg.register_.model_name} v{result['version']} already deployed: {result['release']} "
                   f"(pointer {result['pointer']})")
    else:
        typer.echo(f"deployed {cfg.register_.model_name} v{result['version']} -> {result['release']} "
                   f"(pointer {result['pointer']})")


@app.command()
def serve(
    params: ParamsOpt = Path("params.yaml"),
    source: Annotated[str, typer.Option(help="Where the model comes from: s3 (the deployed pointer) or "
                                             "registry (MLflow champion alias).")] = "s3",
    host: Annotated[str | None, typer.Option(help="Bind host (default: deploy.serve_host).")] = None,
    port: Annotated[int | None, typer.Option(help="Bind port (default: deploy.serve_port).")] = None,
) -> None:
    """Serve the champion over HTTP (/health, /predict, /reload), hot-reloading when it changes."""
    from pipeline.delivery import server as stage

    if source not in ("s3", "registry"):
        _fail(f"--source must be 's3' or 'registry', got {source!r}")
    cfg = _load(params)
    _run(stage.serve, cfg, source, host, port)


def _publish(cfg: Params) -> None:
    """Publish the registry's champion to S3 (after a promotion decision or a rollback)."""
    from pipeline.delivery import releases as deployer

    result = _run(deployer.publish_champion, cfg)
    typer.echo(f"published v{result['version']}" + (" (already deployed)" if result.get("skipped") else ""))


@app.command()
def promote(
    approve: Annotated[bool, typer.Option("--approve/--reject", help="Approve (champion ← challenger) or reject.")],
    by: Annotated[str, typer.Option("--by", help="Approver name, recorded in the audit trail.")],
    reason: Annotated[str, typer.Option("--reason", help="Why; recorded in the audit trail.")] = "",
    params: ParamsOpt = Path("params.yaml"),
    publish: Annotated[bool, typer.Option(help="Publish the new champion to S3 after approval.")] = False,
) -> None:
    """Decide on the current challenger (same decision as the promotion flow's approval form)."""
    from pipeline.registry import promotion

    cfg = _load(params)
    name = cfg.register_.model_name
    if approve:
        typer.echo(promotion.comparison_markdown(_run(promotion.compare, name)))
    record = _run(promotion.approve if approve else promotion.reject, name, by, reason)
    typer.echo(f"{record['action']} by {record['by']} at {record['at']}: {record['versions']}")
    if approve and publish:
        _publish(cfg)


@app.command()
def rollback(
    by: Annotated[str, typer.Option("--by", help="Who rolls back, recorded in the audit trail.")],
    reason: Annotated[str, typer.Option("--reason", help="Why; recorded in the audit trail.")] = "",
    params: ParamsOpt = Path("params.yaml"),
    publish: Annotated[bool, typer.Option(help="Publish the restored champion to S3.")] = False,
) -> None:
    """champion ← previous (audited); the rolled-back version becomes `previous`."""
    from pipeline.registry import promotion

    cfg = _load(params)
    record = _run(promotion.rollback, cfg.register_.model_name, by, reason)
    typer.echo(f"rollback by {record['by']} at {record['at']}: {record['versions']}")
    if publish:
        _publish(cfg)


@app.command()
def status(params: ParamsOpt = Path("params.yaml")) -> None:
    """Registry aliases and the audit history of the configured model."""
    from pipeline.registry import promotion

    cfg = _load(params)
    name = cfg.register_.model_name
    typer.echo(f"{name}: {_run(promotion.aliases, name)}")
    for record in _run(promotion.history, name):
        typer.echo(f"  {record['at']} {record['action']:8s} by {record['by']}: {record['versions']} {record['reason']}")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())

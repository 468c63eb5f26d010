"""`mlops`: one command per pipeline stage. Thin: parse options, load config, call the stage function.

Heavy libraries (tensorflow, great_expectations, mlflow) are imported inside the stage modules' functions,
so `mlops --help` stays instant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from pipeline.config import ConfigError, Params, load_params
from pipeline.errors import StageError

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


@app.command()
def ingest(
    params: ParamsOpt = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="Directory for shards + manifest.json.")] = Path("data/ingested"),
) -> None:
    """Read the configured dataset into seeded train/val/test/stream shards with a checksummed manifest."""
    from pipeline import ingest as stage

    cfg = _load(params)
    manifest = _run(stage.run, cfg.ingest, seed=cfg.seed, out_dir=out)
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
    from pipeline import validate as stage

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
    from pipeline import preprocess as stage

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
    from pipeline import train as stage

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
    from pipeline import compress as stage

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
    from pipeline import evaluate as stage

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
    from pipeline import register as stage

    cfg = _load(params)
    record = _run(stage.run, cfg, params_path=params, out_path=out)
    typer.echo(f"registered {record['model_name']} v{record['version']} alias={record['alias'] or '-'} "
               f"run={record['run_id']}")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())

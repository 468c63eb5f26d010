"""Training flow: one Prefect task per DVC stage (`dvc repro <stage>`), strictly sequential.

DVC decides what is up to date, so Prefect result caching is off. Overrides are written into params.yaml
(comments kept, validated first) so params.yaml and dvc.lock stay consistent. Ends with a metrics
artifact, `dvc push` when a remote exists, and — when a new challenger was registered — the promotion
flow's deployment, where a human approves or rejects it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import dvc_remote_configured, run_streaming, workspace_lock
from pipeline.registry.aliases import CHALLENGER

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

    from pipeline.core.config import PathsConfig

STAGES = ("ingest", "validate", "preprocess", "train", "compress", "evaluate", "register")


@task(cache_policy=NO_CACHE, retries=0, task_run_name="dvc repro {stage}")
def repro_stage(stage: str, project_dir: str) -> bool:
    """Run one DVC stage; True when it actually ran (False: up to date)."""
    logger = get_run_logger()
    output = run_streaming(["dvc", "repro", "--single-item", stage], Path(project_dir), logger.info)
    return f"Running stage '{stage}'" in output


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 60])
def dvc_push(project_dir: str) -> bool:
    """Push data and models to the DVC remote (safe to retry: content-addressed)."""
    if not dvc_remote_configured(Path(project_dir)):
        get_run_logger().info("no DVC remote configured; skipping dvc push")
        return False
    run_streaming(["dvc", "push"], Path(project_dir), get_run_logger().info)
    return True


def _read(path: Path) -> dict:
    """A JSON file's content, {} when it does not exist (a stage that did not run)."""
    return json.loads(path.read_text()) if path.is_file() else {}


def summary_markdown(project_dir: Path, ran: dict[str, bool], paths: PathsConfig | None = None) -> str:
    """The run's stages and headline metrics as a markdown table (the `training-summary` artifact)."""
    from pipeline.core.config import PathsConfig

    paths = paths or PathsConfig()
    train = _read(project_dir / paths.train_metrics)
    compress = _read(project_dir / paths.compress_metrics)
    evaluation = _read(project_dir / paths.evaluate_metrics)
    record = _read(project_dir / paths.registration)
    lines = ["## Training run", "", "| stage | ran |", "|---|---|"]
    lines += [f"| {s} | {'yes' if r else 'up to date'} |" for s, r in ran.items()]
    lines += [
        "",
        "| metric | value |",
        "|---|---|",
        f"| model | {train.get('model')} ({train.get('params', 0):,} params) |",
        f"| val accuracy | {train.get('val_accuracy', float('nan')):.4f} |",
        f"| train images/s | {train.get('images_per_second')} |",
    ]
    for name, info in (evaluation.get("variants") or {}).items():
        size = (compress.get("variants") or {}).get(name, {}).get("bytes")
        lines.append(
            f"| {name} accuracy / latency / size | {info['accuracy']:.4f} / {info['latency_ms_batch1']:.3f} ms"
            f" / {f'{size:,} B' if size else '–'} |"
        )
    lines += [
        f"| blessed | {evaluation.get('blessed')} |",
        (
            f"| registered | {record.get('model_name')} v{record.get('version')} "
            f"(alias: {record.get('alias') or 'none'}) |"
        ),
        f"| MLflow run | `{record.get('run_id')}` ({record.get('model_uri')}) |",
    ]
    return "\n".join(lines)


@flow(name="training", log_prints=True)
def training_flow(
    overrides: dict[str, Any] | None = None,
    project_dir: str = ".",
    promote: bool = True,
    wait_for_workspace_s: float = 600.0,
) -> dict:
    """Run the DVC pipeline stage by stage; start the promotion review when a new challenger exists."""
    from pipeline.core.config import load_params, update_params

    root = Path(project_dir).resolve()
    logger = get_run_logger()
    with workspace_lock(root, wait_for_workspace_s):
        if overrides:
            update_params(root / "params.yaml", overrides)
            logger.info("params.yaml updated: %s", overrides)
        ran = {stage: repro_stage(stage, str(root)) for stage in STAGES}
        pushed = dvc_push(str(root))
    paths = load_params(root / "params.yaml").paths
    record = _read(root / paths.registration)
    create_markdown_artifact(summary_markdown(root, ran, paths), key="training-summary", description="Training run")
    result = {"ran": ran, "pushed": pushed, "registration": record}
    if promote and ran["register"] and record.get("alias") == CHALLENGER:
        result["promotion_flow_run"] = start_promotion(record["model_name"])
    return result


def start_promotion(model_name: str) -> str | None:
    """Trigger the promotion deployment (does not wait: a human answers it). None outside deployments."""
    from prefect.deployments import run_deployment

    try:
        run = run_deployment("promotion/promotion", parameters={"model_name": model_name}, timeout=0, as_subflow=False)
    except Exception as exc:  # noqa: BLE001 - e.g. run locally without deployments
        get_run_logger().warning("promotion deployment not started (%s); approve with `mlops promote`.", exc)
        return None
    return str(cast("FlowRun", run).id)  # synchronous call: a FlowRun, not a coroutine


if __name__ == "__main__":
    training_flow()

"""Training flow: a run is a fresh clone and ends as a commit. One Prefect task per DVC stage, sequential.

With `remote` (the deployments: the pull step cloned the repo into an empty directory) the run checks out the
last successful run's commit (`runs/latest`, default branch merged in) and `dvc pull`s its data, so a run with
nothing new reruns nothing and registers nothing. DVC decides what is up to date (Prefect caching is off).
Overrides are written into params.yaml (validated first). A run that registered a version commits params.yaml,
dvc.lock and the uncached outputs on runs/<flow run>, pushes git + DVC (run cache too), tags the version with
that commit and only then sets `challenger` and starts the promotion deployment, where a human decides.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import require_shared_mlflow, run_name, run_streaming, workspace_lock
from pipeline.registry.aliases import CHALLENGER
from pipeline.versioning.workspace import Base, checkout_base, configure_dvc_remote, dvc_pull, require_inputs

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


def _read(path: Path) -> dict:
    """A JSON file's content, {} when it does not exist (a stage that did not run)."""
    return json.loads(path.read_text()) if path.is_file() else {}


def summary_markdown(
    project_dir: Path, ran: dict[str, bool], paths: PathsConfig | None = None, committed: dict | None = None
) -> str:
    """The run's stages and headline metrics as a markdown table (the `training-summary` artifact)."""
    from pipeline.core.config import PathsConfig

    paths = paths or PathsConfig()
    train = _read(project_dir / paths.train_metrics)
    compress = _read(project_dir / paths.compress_metrics)
    evaluation = _read(project_dir / paths.evaluate_metrics)
    record = {**_read(project_dir / paths.registration), **(committed or {})}
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
        f"| commit | `{(record.get('commit') or 'none')[:12]}` on {record.get('ref') or '–'} |",
    ]
    return "\n".join(lines)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 30])
def prepare(project_dir: str, remote: str) -> Base:
    """Check out the base commit (last successful run, default branch merged in) and `dvc pull` its data."""
    from pipeline.versioning.git import Git

    root, log = Path(project_dir), get_run_logger().info
    require_shared_mlflow()
    base = checkout_base(Git(root), remote, log)
    configure_dvc_remote(root, log)
    dvc_pull(root, log)
    require_inputs(root)
    return base


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 60])
def commit(project_dir: str, name: str, remote: str | None, base: Base | None) -> dict:
    """Commit the run, push git + DVC, tag the version, then `challenger` (safe to retry: idempotent)."""
    from pipeline.core.config import load_params
    from pipeline.versioning.commit import commit_run

    root = Path(project_dir)
    return commit_run(root, load_params(root / "params.yaml"), name, remote, base, get_run_logger().info)


@flow(name="training", log_prints=True)
def training_flow(
    overrides: dict[str, Any] | None = None,
    project_dir: str = ".",
    promote: bool = True,
    wait_for_workspace_s: float = 600.0,
    remote: str | None = None,
) -> dict:
    """Run the DVC pipeline stage by stage; when it registered a version, commit + push the run, then review.

    `remote` (a git remote name or URL, e.g. `origin` in the deployments' fresh clone): start from the last
    successful run's commit there and push the result back. Without it, the run happens in `project_dir` as it
    is (one run at a time) and its commit stays local.
    """
    from pipeline.core.config import load_params, update_params
    from pipeline.registry import store

    root = Path(project_dir).resolve()
    store.use_project(root)
    logger = get_run_logger()
    name = run_name()
    with contextlib.nullcontext() if remote else workspace_lock(root, wait_for_workspace_s):
        base = prepare(str(root), remote) if remote else None
        if overrides:
            update_params(root / "params.yaml", overrides)
            logger.info("params.yaml updated: %s", overrides)
        ran = {stage: repro_stage(stage, str(root)) for stage in STAGES}
        committed = commit(str(root), name, remote, base) if ran["register"] else None
    if committed is None:
        logger.info("nothing new: every stage was up to date, nothing registered or committed")
    paths = load_params(root / "params.yaml").paths
    record = {**_read(root / paths.registration), **(committed or {})}
    summary = summary_markdown(root, ran, paths, committed)
    create_markdown_artifact(summary, key="training-summary", description="Training run")
    result = {"ran": ran, "base": base and base.commit, "registration": record if committed else None}
    if promote and committed and committed.get("alias") == CHALLENGER:
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

"""Monitor flow (the feedback loop): score the champion on incoming labelled batches, detect drift and
degradation, and after N consecutive bad batches (cooldown respected) retrain on the accepted data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

    from pipeline.core.config import Params


def _rooted(params: Params, root: Path) -> Params:
    """`params` with every paths: entry made absolute against the project root (the flow never changes directory)."""
    from pipeline.core.config import PathsConfig

    paths = PathsConfig(**{name: str(root / value) for name, value in params.paths.model_dump().items()})
    return params.model_copy(update={"paths": paths})


def _profile(version: str, model, data_dir: Path, state_dir: Path) -> dict:
    """Training reference for drift, cached per champion version."""
    from pipeline.core import io
    from pipeline.monitoring.scoring import build_profile

    path = state_dir / f"profile-v{version}.json"
    if path.is_file():
        return io.read_json(path)
    profile = build_profile(data_dir, model)
    io.write_json(path, profile)
    return profile


@task(cache_policy=NO_CACHE)
def log_batch(experiment: str, model_name: str, version: str, record: dict) -> None:
    """One MLflow run per batch in the monitoring experiment."""
    import mlflow

    from pipeline.core.metrics import numeric_metrics
    from pipeline.registry import store as registry

    experiment_id = registry.ensure_experiment(experiment)
    assessment = record.get("assessment") or {}
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=record["file"],
        tags={
            "model_name": model_name,
            "champion_version": version,
            "status": record["status"],
            "bad": str(record.get("bad")).lower(),
            "batch_sha256": record["sha256"],
        },
    ):
        mlflow.log_metrics(
            {
                **numeric_metrics("", {k: v for k, v in assessment.items() if k != "reasons"}),
                "consecutive_bad": record.get("consecutive_bad", 0),
            }
        )
        mlflow.log_dict(record, "batch.json")


def batches_markdown(records: list[dict], decision: str) -> str:
    """The `monitoring` artifact: the decision and one table row per processed batch."""
    lines = [
        "## Monitoring",
        "",
        f"**Decision:** {decision}",
        "",
        "| batch | status | n | accuracy | PSI | drifted | degraded | consecutive bad |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        a = r.get("assessment") or {}
        acc = a.get("accuracy")
        lines.append(
            f"| {r['file']} | {r['status']} | {a.get('n', '–')} | "
            f"{'–' if acc is None else f'{acc:.4f}'} | {a.get('psi', float('nan')):.3f} | "
            f"{a.get('drifted', '–')} | {a.get('degraded', '–')} | {r.get('consecutive_bad')} |"
        )
    return "\n".join(lines)


def _check_batches(params: Params, champion, model, profile: dict, state, max_batches: int) -> list[dict]:
    """Run up to `max_batches` incoming batches through the loop step, logging each one to MLflow."""
    from pipeline.core.errors import StageError
    from pipeline.monitoring import intake

    logger = get_run_logger()
    records = []
    for _ in range(max_batches):
        batch = intake.next_batch(params, state)
        if batch is None:
            break
        try:
            record = intake.check_batch(params, batch, model, champion.accuracy, profile, state)
        except StageError as exc:
            logger.error(str(exc))
            continue
        logger.info("%s: %s bad=%s %s", record["file"], record["status"], record.get("bad"), record.get("reasons"))
        log_batch(params.monitor.experiment, champion.model_name, champion.version, record)
        records.append(record)
    return records


@flow(name="monitor", log_prints=True)
def monitor_flow(
    project_dir: str = ".", max_batches: int = 5, retrain: bool = True, training_overrides: dict | None = None
) -> dict:
    """Process up to `max_batches` incoming batches; trigger the training deployment when the loop says so."""
    from pipeline.core.config import load_params
    from pipeline.monitoring.state import MonitorState, mark_triggered, should_retrain
    from pipeline.registry import store
    from pipeline.registry.champion import load_by_alias

    root = Path(project_dir).resolve()
    store.use_project(root)
    logger = get_run_logger()
    params = _rooted(load_params(root / "params.yaml"), root)
    model_name, state_path = params.register_.model_name, Path(params.paths.monitor_state)
    champion = load_by_alias(model_name)
    if champion is None:
        logger.warning("%s has no champion yet: nothing to monitor (approve a challenger first)", model_name)
        return {"decision": "no-champion", "batches": []}
    model = champion.model()
    profile = _profile(champion.version, model, Path(params.paths.ingested), state_path.parent)
    state = MonitorState.load(state_path)
    records = _check_batches(params, champion, model, profile, state, max_batches)
    go, why = should_retrain(state, params.monitor)
    result: dict[str, Any] = {
        "decision": "retrain" if go else "ok",
        "reason": why,
        "champion_version": champion.version,
        "batches": [{k: r.get(k) for k in ("file", "status", "bad", "reasons")} for r in records],
    }
    if go and retrain:
        mark_triggered(state, reason=why)
        state.save(state_path)
        result["training_flow_run"] = start_training(training_overrides)
    create_markdown_artifact(
        batches_markdown(records, f"{result['decision']}: {why}"),
        key="monitoring",
        description=f"{model_name} champion v{champion.version}",
    )
    logger.info(json.dumps({k: result[k] for k in ("decision", "reason")}))
    return result


def start_training(overrides: dict | None) -> str | None:
    """Trigger the training deployment (accepted batches are an ingest dependency: a new data version)."""
    from prefect.deployments import run_deployment

    try:
        run = run_deployment(
            "training/training", parameters={"overrides": overrides} if overrides else None, timeout=0, as_subflow=False
        )
    except Exception as exc:  # noqa: BLE001 - outside deployments (local dev) there is nothing to trigger
        get_run_logger().warning("training deployment not started (%s); run `dvc repro` to retrain.", exc)
        return None
    return str(cast("FlowRun", run).id)  # synchronous call: a FlowRun, not a coroutine


if __name__ == "__main__":
    monitor_flow()

"""Monitor flow (the feedback loop): score the champion on incoming labelled batches, detect drift and
degradation, and after N consecutive bad batches (cooldown respected) retrain on the accepted data.

Stateless with `remote`: the accepted data and the monitor state are versioned in the run commits (they feed
ingest, so a retrain's commit pins the data it used) and batches arrive in an S3 inbox.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import require_shared_mlflow, run_name
from pipeline.versioning.workspace import Base, checkout_base, configure_dvc_remote, dvc_pull

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


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 30])
def prepare(project_dir: str, remote: str) -> Base:
    """Check out the last successful run's commit; pull the training data (drift reference) and accepted data."""
    from pipeline.core.config import load_params
    from pipeline.versioning.git import Git

    root, log = Path(project_dir), get_run_logger().info
    require_shared_mlflow()
    base = checkout_base(Git(root), remote, log)
    paths = load_params(root / "params.yaml").paths
    if configure_dvc_remote(root, log):
        accepted = f"{paths.accepted}.dvc"
        dvc_pull(root, log, ("ingest", *([accepted] if (root / accepted).is_file() else [])))
    return base


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 30])
def commit_loop_state(project_dir: str, name: str, remote: str, base: Base, n_batches: int) -> dict:
    """Version what this run changed — accepted batches (DVC) and the monitor state (git) — as one pushed commit."""
    from pipeline.core.config import load_params
    from pipeline.core.process import run_streaming
    from pipeline.versioning.git import Git
    from pipeline.versioning.workspace import dvc_push, publish

    root, log = Path(project_dir), get_run_logger().info
    accepted = load_params(root / "params.yaml").paths.accepted
    run_streaming(["dvc", "add", "--quiet", accepted], root, log)
    git = Git(root)
    commit = git.snapshot(f"monitor {name}: {n_batches} batch(es) processed")
    if commit == base.commit:
        return {"commit": None}
    dvc_push(root, log)
    return {"commit": commit, **publish(git, remote, commit, name, base, log)}


def _settle_inbox(params: Params, fetched: list[str], state) -> dict:
    """Drop processed batches from the S3 inbox (after the commit that holds them was pushed)."""
    from pipeline.core import io
    from pipeline.delivery import inbox

    if not params.monitor.inbox or not fetched:
        return {}
    incoming = Path(params.paths.incoming)
    return inbox.settle(
        params.deploy, params.monitor.inbox, fetched, incoming, lambda p: io.sha256_file(p) in state.processed
    )


@flow(name="monitor", log_prints=True)
def monitor_flow(
    project_dir: str = ".",
    max_batches: int = 5,
    retrain: bool = True,
    training_overrides: dict | None = None,
    remote: str | None = None,
) -> dict:
    """Process up to `max_batches` incoming batches; trigger the training deployment when the loop says so.

    With `remote` (the deployments: a fresh clone) the loop state comes from the last successful run's commit
    and goes back as a new commit (accepted batches DVC-tracked, the state in git) before retraining starts;
    batches come from the S3 inbox (`monitor.inbox`) when one is configured.
    """
    from pipeline.core.config import load_params
    from pipeline.delivery import inbox
    from pipeline.monitoring.state import MonitorState, mark_triggered, should_retrain
    from pipeline.registry import store
    from pipeline.registry.champion import load_by_alias

    root = Path(project_dir).resolve()
    store.use_project(root)
    logger, name = get_run_logger(), run_name()
    base = prepare(str(root), remote) if remote else None
    params = _rooted(load_params(root / "params.yaml"), root)
    model_name, state_path = params.register_.model_name, Path(params.paths.monitor_state)
    champion = load_by_alias(model_name)
    if champion is None:
        logger.warning("%s has no champion yet: nothing to monitor (approve a challenger first)", model_name)
        return {"decision": "no-champion", "batches": []}
    inbox_uri = params.monitor.inbox
    fetched = inbox.fetch(params.deploy, inbox_uri, Path(params.paths.incoming)) if inbox_uri else []
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
    if remote and base is not None and (records or (go and retrain)):
        result["commit"] = commit_loop_state(str(root), name, remote, base, len(records))
    result["inbox"] = _settle_inbox(params, fetched, state)
    if go and retrain:
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

"""Monitor flow (the feedback loop): score the champion on incoming labelled batches, detect drift and
degradation, and after N consecutive bad batches (cooldown respected) retrain on the accepted data.

Unlabelled traffic captured by the model server (`<inbox>/captured/`) is watched too: drift on it opens a labelling
request (JSON + artifact) and its images wait in `monitor.captured`; labels dropped into `<inbox>/labels/` (or given
with `mlops label`) join them, and a retrain starts once `monitor.min_new_labels` of them are labelled.

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
from pipeline.monitoring.report import batches_markdown
from pipeline.versioning.workspace import Base, checkout_base, configure_dvc_remote, dvc_pull

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

    from pipeline.core.config import Params


def _rooted(params: Params, root: Path) -> Params:
    """`params` with every paths: entry made absolute against the project root (the flow never changes directory)."""
    from pipeline.core.config import PathsConfig

    paths = PathsConfig(**{name: str(root / value) for name, value in params.paths.model_dump().items()})
    monitor = params.monitor.model_copy(update={"captured": str(root / params.monitor.captured)})
    return params.model_copy(update={"paths": paths, "monitor": monitor})


def _profile(version: str, model, data_dir: Path, state_dir: Path) -> dict:
    """Training reference for drift, cached per champion version."""
    from pipeline.core import io
    from pipeline.monitoring.scoring import build_profile

    path = state_dir / f"profile-v{version}.json"
    if path.is_file() and "confidence" in (cached := io.read_json(path)):
        return cached
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
            "kind": record.get("kind", "labelled"),
            "fired": ",".join(assessment.get("fired", [])),
        },
    ):
        signals = {f"signal.{s['name']}": s["value"] for s in assessment.get("signals", [])}
        mlflow.log_metrics(
            {
                **numeric_metrics("", {k: v for k, v in assessment.items() if k not in ("reasons", "signals")}),
                **numeric_metrics("", signals),
                "consecutive_bad": record.get("consecutive_bad", 0),
            }
        )
        mlflow.log_dict(record, "batch.json")


def _check_batches(params: Params, champion, model, profile: dict, state, max_batches: int) -> list[dict]:
    """Run up to `max_batches` labelled, then up to `max_batches` captured batches through the loop step, logging
    each one to MLflow.
    """
    from pipeline.monitoring import captured, intake

    records: list[dict] = []
    steps = [
        (intake.next_batch, lambda b: intake.check_batch(params, b, model, champion.accuracy, profile, state)),
        (captured.next_captured, lambda b: captured.check_captured(params, b, model, profile, state)),
    ]
    for take, check in steps:
        records += _run_steps(params, champion, state, max_batches, take, check)
    return records


def _run_steps(params: Params, champion, state, max_batches: int, take, check) -> list[dict]:
    """Up to `max_batches` batches of `take(params, state)` through `check(batch)`, each logged to MLflow."""
    from pipeline.core.errors import StageError

    logger, records = get_run_logger(), []
    for _ in range(max_batches):
        batch = take(params, state)
        if batch is None:
            break
        try:
            record = check(batch)
        except StageError as exc:
            logger.error(str(exc))
            continue
        logger.info("%s: %s bad=%s %s", record["file"], record["status"], record.get("bad"), record.get("reasons"))
        log_batch(params.monitor.experiment, champion.model_name, champion.version, record)
        records.append(record)
    return records


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 30])
def prepare(project_dir: str, remote: str) -> Base:
    """Check out the last successful run's commit; pull the training data (drift reference), accepted data and the
    captured images waiting for labels.
    """
    from pipeline.core.config import load_params
    from pipeline.versioning.git import Git

    root, log = Path(project_dir), get_run_logger().info
    require_shared_mlflow()
    base = checkout_base(Git(root), remote, log)
    params = load_params(root / "params.yaml")
    if configure_dvc_remote(root, log):
        tracked = [
            f"{d}.dvc" for d in (params.paths.accepted, params.monitor.captured) if (root / f"{d}.dvc").is_file()
        ]
        dvc_pull(root, log, ("ingest", *tracked))
    return base


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 30])
def commit_loop_state(project_dir: str, name: str, remote: str, base: Base, n_batches: int) -> dict:
    """Version what this run changed — accepted batches and captured images waiting for labels (DVC), the monitor
    state and labelling requests (git) — as one pushed commit.
    """
    from pipeline.core.config import load_params
    from pipeline.core.process import run_streaming
    from pipeline.versioning.git import Git
    from pipeline.versioning.workspace import dvc_push, publish

    root, log = Path(project_dir), get_run_logger().info
    params = load_params(root / "params.yaml")
    tracked = [d for d in (params.paths.accepted, params.monitor.captured) if (root / d).is_dir()]
    run_streaming(["dvc", "add", "--quiet", *tracked], root, log)
    git = Git(root)
    commit = git.snapshot(f"monitor {name}: {n_batches} batch(es) processed")
    if commit == base.commit:
        return {"commit": None}
    dvc_push(root, log)
    return {"commit": commit, **publish(git, remote, commit, name, base, log)}


def _fetch_inbox(params: Params) -> dict[str, list[str]]:
    """Copy the S3 inbox's labelled batches, captured batches and label files (.json) into paths.incoming."""
    from pipeline.delivery import inbox

    if not params.monitor.inbox:
        return {}
    incoming = Path(params.paths.incoming)
    return {sub: inbox.fetch(params.deploy, _uri(params, sub), incoming / sub) for sub in _INBOX_PARTS}


_INBOX_PARTS = ("", "captured", "labels")


def _uri(params: Params, sub: str) -> str:
    return f"{str(params.monitor.inbox).rstrip('/')}/{sub}".rstrip("/")


def _settle_inbox(params: Params, fetched: dict[str, list[str]], state) -> dict:
    """Drop processed batches and label files from the S3 inbox (after the commit that holds them was pushed)."""
    from pipeline.core import io
    from pipeline.delivery import inbox

    incoming, done = Path(params.paths.incoming), {}
    for sub, names in fetched.items():
        if names:
            seen = (lambda p: io.sha256_file(p) in state.processed) if sub != "labels" else (lambda p: False)
            done[sub or "batches"] = inbox.settle(params.deploy, _uri(params, sub), names, incoming / sub, seen)
    return done


def _labels_and_requests(params: Params, profile: dict, state, records: list[dict]) -> dict:
    """Apply label files dropped into <paths.incoming>/labels/; show this run's labelling requests as an artifact."""
    from pipeline.core import io
    from pipeline.monitoring import labelling, labels

    logger = get_run_logger()
    applied = labels.apply_label_drops(params, profile["class_names"], state)
    for result in applied:
        (logger.error if "error" in result else logger.info)(json.dumps(result))
    requests = [io.read_json(Path(r["label_request"])) for r in records if r.get("label_request")]
    if requests:
        create_markdown_artifact(labelling.request_markdown(requests), key="labelling-request")
    return {"labels": applied, "label_requests": [r["id"] for r in requests]}


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
    fetched = _fetch_inbox(params)
    model = champion.model()
    profile = _profile(champion.version, model, Path(params.paths.ingested), state_path.parent)
    state = MonitorState.load(state_path)
    records = _check_batches(params, champion, model, profile, state, max_batches)
    joined = _labels_and_requests(params, profile, state, records)
    go, why = should_retrain(state, params.monitor)
    result: dict[str, Any] = {
        "decision": "retrain" if go else "ok",
        "reason": why,
        "champion_version": champion.version,
        "open_drift": state.open_drift,
        "new_labels": state.new_labels,
        "batches": [{k: r.get(k) for k in ("file", "kind", "status", "bad", "reasons")} for r in records],
        **joined,
    }
    if go and retrain:
        mark_triggered(state, reason=why)
        state.save(state_path)
    if remote and base is not None and (records or joined["labels"] or (go and retrain)):
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

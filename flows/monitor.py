"""Monitor flow (the feedback loop): score the champion on incoming labelled batches, detect drift and
degradation, and after N consecutive bad batches (cooldown respected) retrain on the accepted data."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE



def _champion(model_name: str, workdir: Path):
    """(version, TFLiteModel, test accuracy) of the registry champion, or None."""
    from pipeline.registry import store as registry
    from pipeline.ml.tflite import TFLiteModel

    version = registry.version_by_alias(model_name, "champion")
    if version is None:
        return None
    path = registry.download_tflite(model_name, "champion", workdir)
    accuracy = registry.client().get_run(version.run_id).data.metrics.get("eval.accuracy") if version.run_id else None
    return version.version, TFLiteModel(path), accuracy


def _profile(version: str, model, data_dir: Path, state_dir: Path) -> dict:
    """Training reference for drift, cached per champion version."""
    from pipeline.core import io
    from pipeline.monitoring import intake as monitor

    path = state_dir / f"profile-v{version}.json"
    if path.is_file():
        return io.read_json(path)
    profile = monitor.build_profile(data_dir, model)
    io.write_json(path, profile)
    return profile


@task(cache_policy=NO_CACHE)
def log_batch(experiment: str, model_name: str, version: str, record: dict) -> None:
    """One MLflow run per batch in the monitoring experiment."""
    import mlflow

    from pipeline.registry import store as registry
    from pipeline.core.metrics import numeric_metrics

    experiment_id = registry.ensure_experiment(experiment)
    assessment = record.get("assessment") or {}
    with mlflow.start_run(experiment_id=experiment_id, run_name=record["file"],
                          tags={"model_name": model_name, "champion_version": version, "status": record["status"],
                                "bad": str(record.get("bad")).lower(), "batch_sha256": record["sha256"]}):
        mlflow.log_metrics({**numeric_metrics("", {k: v for k, v in assessment.items() if k != "reasons"}),
                            "consecutive_bad": record.get("consecutive_bad", 0)})
        mlflow.log_dict(record, "batch.json")


def batches_markdown(records: list[dict], decision: str) -> str:
    lines = ["## Monitoring", "", f"**Decision:** {decision}", "",
             "| batch | status | n | accuracy | PSI | drifted | degraded | consecutive bad |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        a = r.get("assessment") or {}
        acc = a.get("accuracy")
        lines.append(f"| {r['file']} | {r['status']} | {a.get('n', '–')} | "
                     f"{'–' if acc is None else f'{acc:.4f}'} | {a.get('psi', float('nan')):.3f} | "
                     f"{a.get('drifted', '–')} | {a.get('degraded', '–')} | {r.get('consecutive_bad')} |")
    return "\n".join(lines)


@flow(name="monitor", log_prints=True)
def monitor_flow(project_dir: str = ".", max_batches: int = 5, retrain: bool = True,
                 training_overrides: dict | None = None) -> dict:
    """Process up to `max_batches` incoming batches; trigger the training deployment when the loop says so."""
    from pipeline.monitoring import intake as monitor
    from pipeline.core.config import load_params
    from pipeline.core.errors import StageError

    os.chdir(project_dir)
    logger = get_run_logger()
    params = load_params("params.yaml")
    cfg, model_name = params.monitor, params.register_.model_name
    with tempfile.TemporaryDirectory() as tmp:
        champion = _champion(model_name, Path(tmp))
        if champion is None:
            logger.warning(f"{model_name} has no champion yet: nothing to monitor (approve a challenger first)")
            return {"decision": "no-champion", "batches": []}
        version, model, accuracy = champion
        profile = _profile(version, model, Path("data/ingested"), Path(cfg.state_path).parent)
        state = monitor.MonitorState.load(cfg.state_path)
        records = []
        for _ in range(max_batches):
            batch = monitor.next_batch(cfg, state)
            if batch is None:
                break
            try:
                record = monitor.check_batch(params, batch, model, accuracy, profile, state)
            except StageError as exc:
                logger.error(str(exc))
                continue
            logger.info(f"{record['file']}: {record['status']} bad={record.get('bad')} {record.get('reasons')}")
            log_batch(cfg.experiment, model_name, version, record)
            records.append(record)
    go, why = monitor.should_retrain(state, cfg)
    result = {"decision": "retrain" if go else "ok", "reason": why, "champion_version": version,
              "batches": [{k: r.get(k) for k in ("file", "status", "bad", "reasons")} for r in records]}
    if go and retrain:
        monitor.mark_triggered(state, reason=why)
        state.save(cfg.state_path)
        result["training_flow_run"] = start_training(training_overrides)
    create_markdown_artifact(batches_markdown(records, f"{result['decision']}: {why}"), key="monitoring",
                             description=f"{model_name} champion v{version}")
    logger.info(json.dumps({k: result[k] for k in ("decision", "reason")}))
    return result


def start_training(overrides: dict | None) -> str | None:
    """Trigger the training deployment (accepted batches are an ingest dependency: a new data version)."""
    from prefect.deployments import run_deployment

    try:
        run = run_deployment("training/training", parameters={"overrides": overrides} if overrides else None,
                             timeout=0, as_subflow=False)
    except Exception as exc:  # noqa: BLE001 - outside deployments (local dev) there is nothing to trigger
        get_run_logger().warning(f"training deployment not started ({exc}); run `dvc repro` to retrain.")
        return None
    return str(run.id)


if __name__ == "__main__":
    monitor_flow()

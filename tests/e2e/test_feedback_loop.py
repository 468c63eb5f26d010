"""End to end on the project's local stack (infra/local/stack.sh): Prefect server + process worker, S3 (nanio),
MLflow tracking server with artifacts in S3.

clean batch → no retrain; drifted batches → retrain → challenger → approval through Prefect's input API →
champion moves (audited) → S3 release published → the server answers with the new version;
`mlops rollback` restores the previous one; a cron schedule fires a deployment that completes.
"""

from __future__ import annotations

import contextlib

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers_project import make_project, run, stop_group, tool_env
from tests.helpers_s3 import free_port
from tests.helpers_stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.e2e,
              pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                                 reason="needs Debian package dataset-fashion-mnist (make dataset)")]

MODEL = "e2e-classifier"
PARAMS = {
    "ingest": {"max_per_class": 100, "stream_fraction": 0.4},
    "train": {"width": 16, "epochs": 3, "batch_size": 32},
    "compress": {"fine_tune_epochs": 1, "representative_samples": 50},
    "evaluate": {"min_accuracy": 0.3, "per_class_floor": 0.0, "max_drop_vs_fp32": 0.1, "latency_runs": 5,
                 "mcnemar_alpha": 0.001},
    "register": {"model_name": MODEL, "experiment": "e2e"},
    "monitor": {"batch_size": 120, "consecutive_batches": 2, "cooldown_minutes": 0, "psi_threshold": 0.5,
                "max_accuracy_drop": 0.25},
    "deploy": {"bucket": "models", "reload_seconds": 1},
}


def _wait(predicate, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _get_json(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())
    except OSError:
        return None


@pytest.fixture
def stack(tmp_path, monkeypatch):
    """The project's local stack (infra/local/stack.sh): nanio S3, MLflow server with artifacts proxied to S3,
    Prefect server, the deployments of prefect.yaml and a process worker — serving a fresh project copy."""
    work = make_project(tmp_path, PARAMS)
    services = Stack(tmp_path / "stack", work, extra_env={
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "true", "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
        "PREFECT_WORKER_QUERY_SECONDS": "2"})
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = []
    contexts = contextlib.ExitStack()
    try:
        services.up()
        env = {**services.client_env(), "MLOPS_PROJECT_DIR": str(work)}
        for name in ("training/training", "monitor/monitor"):  # the test fires runs itself; a cron added later
            run(["prefect", "deployment", "schedule", "clear", name, "-y"], work, env)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        # Prefect reads its settings from the environment once per process, when first imported: a test that
        # imported prefect earlier (e.g. tests/unit/test_infra_files.py) would keep this process on an ephemeral
        # server. Point the test's own Prefect client at the stack's server explicitly.
        from prefect.settings import PREFECT_API_URL, temporary_settings

        contexts.enter_context(temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}))

        def start(name, cmd):
            proc = subprocess.Popen(cmd, cwd=work, env=tool_env(env), stdout=open(logs / f"{name}.log", "w"),
                                    stderr=subprocess.STDOUT, start_new_session=True)
            procs.append(proc)
            return proc

        yield work, env, start, logs
    finally:
        for proc in reversed(procs):
            stop_group(proc)
        contexts.close()
        result = services.sh("down", timeout=120)
        assert result.returncode == 0, result.stderr


def _flow_runs(flow_name: str):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                     sort=FlowRunSort.EXPECTED_START_TIME_ASC)


def _run_deployment(name: str, timeout: float = 900):
    from prefect.deployments import run_deployment

    flow_run = run_deployment(name, timeout=timeout, as_subflow=False)
    assert flow_run.state.is_completed(), f"{name}: {flow_run.state}"
    return flow_run


def _final(flow_run_id, timeout: float):
    """The flow run once it reached a final state."""
    from prefect import get_client

    def done():
        with get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(flow_run_id)
        return flow_run if flow_run.state.is_final() else None

    return _wait(done, timeout, f"flow run {flow_run_id} to finish", interval=2)


def _approve_pending_promotion(n_expected: int, reason: str) -> None:
    """Find the paused promotion run and answer its approval form through Prefect's input API."""
    from prefect.flow_runs import resume_flow_run

    def paused():
        runs = _flow_runs("promotion")
        return len(runs) >= n_expected and runs[n_expected - 1].state.is_paused() and runs[n_expected - 1]

    promo = _wait(paused, 600, f"promotion run #{n_expected} to pause for approval", interval=2)
    resume_flow_run(promo.id, run_input={"approve": True, "approver": "e2e-bot", "reason": reason})
    final = _final(promo.id, 300)
    assert final.state.is_completed(), final.state


def _champion() -> str | None:
    from pipeline.registry import promotion as promote

    return promote.aliases(MODEL)["champion"]


def test_closed_loop_with_approval_deploy_serve_and_rollback(stack):
    from pipeline.delivery import releases as deploy
    from pipeline.registry import promotion as promote
    from pipeline.core.config import load_params

    work, env, start, logs = stack
    params = load_params(work / "params.yaml")

    # 1. first training run → challenger → promotion paused → approved → champion v1 published to S3
    _run_deployment("training/training")
    _approve_pending_promotion(1, "first model")
    assert _champion() == "1"
    assert deploy.read_pointer(params.deploy, MODEL)["version"] == "1"

    port = free_port()
    start("serve", ["mlops", "serve", "--source", "s3", "--port", str(port)])
    health = _wait(lambda: _get_json(f"http://127.0.0.1:{port}/health"), 90, "the model server")
    assert str(health["version"]) == "1"

    # 2. a clean batch: no retraining
    run(["mlops", "simulate", "--kind", "none", "--batches", "1"], work, env)
    _run_deployment("monitor/monitor", timeout=300)
    state = json.loads((work / "data/monitor/state.json").read_text())
    assert state["consecutive_bad"] == 0 and len(state["accepted"]) == 1
    assert len(_flow_runs("training")) == 1

    # 3. two drifted batches: retraining is triggered, ends in a challenger awaiting approval
    run(["mlops", "simulate", "--kind", "brightness", "--severity", "0.8", "--batches", "2"], work, env)
    _run_deployment("monitor/monitor", timeout=300)
    trainings = _wait(lambda: len(_flow_runs("training")) >= 2 and _flow_runs("training"), 60, "a triggered retrain")
    assert _final(trainings[1].id, 900).state.is_completed()
    manifest = json.loads((work / "data/ingested/manifest.json").read_text())
    assert manifest["monitoring"]["accepted"] == 3 * 120, manifest["monitoring"]
    _approve_pending_promotion(2, "retrained on drifted data")
    assert _champion() == "2"
    assert promote.aliases(MODEL)["previous"] == "1"
    history = promote.history(MODEL)
    assert [(h["action"], h["by"]) for h in history] == [("approve", "e2e-bot"), ("approve", "e2e-bot")]
    assert history[-1]["diff"], "the audit record carries the metrics diff"
    assert deploy.read_pointer(params.deploy, MODEL)["version"] == "2"
    _wait(lambda: str((_get_json(f"http://127.0.0.1:{port}/health") or {}).get("version")) == "2", 60,
          "the server to pick up v2")
    image = [[[0.0] for _ in range(28)] for _ in range(28)]
    request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=json.dumps({"instances": [image]}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        answer = json.loads(resp.read())
    assert str(answer["version"]) == "2" and len(answer["predictions"]) == 1

    # 4. rollback restores the previous champion, audited, and the server follows
    run(["mlops", "rollback", "--by", "e2e-bot", "--reason", "drill", "--publish"], work, env)
    assert _champion() == "1"
    assert promote.history(MODEL)[-1]["action"] == "rollback"
    _wait(lambda: str((_get_json(f"http://127.0.0.1:{port}/health") or {}).get("version")) == "1", 60,
          "the server to roll back to v1")

    # 5. a cron schedule fires the monitor deployment, which completes
    before = len(_flow_runs("monitor"))
    run(["prefect", "deployment", "schedule", "create", "monitor/monitor", "--cron", "* * * * *", "-y"], work, env)

    def scheduled_completed():
        runs = _flow_runs("monitor")[before:]
        return any(r.auto_scheduled and r.state.is_completed() for r in runs)

    _wait(scheduled_completed, 240, "a scheduled monitor run to complete", interval=3)

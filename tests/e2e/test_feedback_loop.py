"""End to end on the project's local stack (infra/local/stack.sh): Prefect server + process worker in an empty
directory, S3 (nanio), MLflow tracking server with artifacts in S3, a bare git repository as the git remote — and
a headless Chromium for the approver.

The project's one closed-loop test. Every flow run clones the git remote and ends as a pushed commit. first
training → commit on runs/<run>, challenger → approved in the browser (Prefect UI: review artifact, form) →
champion (alias + `champion` branch) → S3 release → served; a training run with nothing new is a no-op; real test
images through HTTP → the server captures them into the S3 inbox → the monitor sees no drift; brightened images →
drift flagged without labels, a labelling request, no retrain; labels dropped into the inbox later → joined as a
new data version → retrain → approved in the browser → the server answers with v2; v2 rebuilt from the registry
alone (`mlops reproduce`); two training runs at once on two workers; `mlops rollback`; a rejection in the browser;
a cron schedule fires a deployment that completes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request

import pytest

from tests.helpers_browser import browser, fill_approval, open_resume_form, screenshot, show_artifact, submit
from tests.helpers_project import FASHION_MNIST, make_project, run, stop_group, tool_env
from tests.helpers_s3 import free_port
from tests.helpers_stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.e2e,
              pytest.mark.skipif(FASHION_MNIST is None, reason="needs the Fashion-MNIST files (make dataset)")]

MODEL = "e2e-classifier"
PARAMS = {
    "ingest": {"max_per_class": 100, "stream_fraction": 0.4},
    "train": {"width": 16, "epochs": 3, "batch_size": 32},
    "compress": {"fine_tune_epochs": 1, "representative_samples": 50},
    "evaluate": {"min_accuracy": 0.3, "per_class_floor": 0.0, "max_drop_vs_fp32": 0.1, "latency_runs": 5,
                 "mcnemar_alpha": 0.001},
    "register": {"model_name": MODEL, "experiment": "e2e"},
    "monitor": {"batch_size": 120, "consecutive_batches": 2, "cooldown_minutes": 0, "psi_threshold": 0.5,
                "max_accuracy_drop": 0.25, "min_new_labels": 100, "label_request_size": 20},
    # the server records every answer; one .npz per 120 images (a monitor batch), never flushed early by time
    "capture": {"enabled": True, "sample_rate": 1.0, "batch_images": 120, "flush_seconds": 600},
    "deploy": {"bucket": "models", "reload_seconds": 1},
}
PARAMS["monitor"]["inbox"] = INBOX = "s3://incoming/batches"


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
        "PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_UI_ENABLED": "true"})  # the approver's browser needs the UI
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = []
    contexts = contextlib.ExitStack()
    try:
        services.up()
        env = services.client_env()
        for name in ("training/training", "monitor/monitor"):  # the test fires runs itself; a cron added later
            run(["prefect", "deployment", "schedule", "clear", name, "-y"], work, env)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        # Prefect reads its settings from the environment once per process, when first imported: a test that
        # imported prefect earlier (e.g. tests/unit/test_infra_files.py) would keep this process on an ephemeral
        # server. Point the test's own Prefect client at the stack's server explicitly.
        from prefect.settings import PREFECT_API_URL, temporary_settings

        contexts.enter_context(temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}))

        def start(name, cmd, cwd=work, extra=None):
            proc = subprocess.Popen(cmd, cwd=cwd, env=tool_env({**env, **(extra or {})}),
                                    stdout=open(logs / f"{name}.log", "w"), stderr=subprocess.STDOUT,
                                    start_new_session=True)
            procs.append(proc)
            return proc

        yield work, env, start, logs, services
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


def _paused_promotion(n_expected: int):
    """The n-th promotion run, once it waits (suspended) for a decision."""

    def paused():
        runs = _flow_runs("promotion")
        return len(runs) >= n_expected and runs[n_expected - 1].state.is_paused() and runs[n_expected - 1]

    return _wait(paused, 600, f"promotion run #{n_expected} to wait for approval", interval=2)


def _approve_pending_promotion(n_expected: int, reason: str) -> None:
    """Answer the waiting promotion run's approval form through Prefect's input API (as a script would)."""
    from prefect.flow_runs import resume_flow_run

    promo = _paused_promotion(n_expected)
    resume_flow_run(promo.id, run_input={"decision": "approve", "approver": "e2e-bot", "reason": reason})
    final = _final(promo.id, 300)
    assert final.state.is_completed(), final.state


def _decide_in_browser(services, promo, decision: str, approver: str, reason: str, shots) -> None:
    """What an approver does: open the waiting run in the Prefect UI, read the review, fill and submit the form."""
    ui = f"http://127.0.0.1:{services.prefect_port}"
    assert promo.state.name == "Suspended", f"a waiting promotion holds no worker: {promo.state.name}"
    with browser() as driver:
        review = show_artifact(driver, ui, promo.id, "promotion-review", expect="test accuracy")
        assert f"Promotion review: {MODEL}" in review and "McNemar" in review and "|---|" not in review, review
        screenshot(driver, f"e2e-promotion-review-{decision}", shots)
        modal = open_resume_form(driver, ui, promo.id)
        assert f"Approve {MODEL} v" in modal.text and "(Optional)" not in modal.text, modal.text
        fill_approval(modal, decision, approver, reason)
        screenshot(driver, f"e2e-promotion-form-{decision}", shots)
        submit(modal)  # the browser stays open until the server has the answer (the request is asynchronous)
        _wait(lambda: _flow_run(promo.id).state.name != "Suspended", 60, "the answer to resume the run")
    final = _final(promo.id, 300)
    assert final.state.is_completed(), final.state


def _champion() -> str | None:
    from pipeline.registry import promotion as promote

    return promote.aliases(MODEL)["champion"]


def _git(bare, *args: str) -> str:
    """A git command on the stack's bare remote."""
    return subprocess.run(["git", "-C", str(bare), *args], check=True, capture_output=True, text=True).stdout.strip()


def _runs(bare) -> dict[str, str]:
    """runs/* branches on the remote: name → commit."""
    out = _git(bare, "for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads/runs/")
    return dict(line.split() for line in out.splitlines())


def _version_lineage(version: str) -> dict:
    from pipeline.registry import lineage

    return lineage.version_tags(MODEL, version)


def _versions() -> list[str]:
    from pipeline.registry import store

    return sorted((mv.version for mv in store.client().search_model_versions(f"name = '{MODEL}'")), key=int)


def _assert_committed(bare, version: str) -> str:
    """The version is a pushed, clean commit on its runs/ branch; returns the commit."""
    tags = _version_lineage(version)
    assert tags["git_dirty"] == "false" and "push-failed" not in tags, tags
    assert tags["git_ref"].startswith("runs/") and _runs(bare)[tags["git_ref"]] == tags["git_commit"], tags
    assert _git(bare, "cat-file", "-t", tags["git_commit"]) == "commit"
    files = _git(bare, "show", "--name-only", "--format=", tags["git_commit"]).split()
    assert "dvc.lock" in files and "reports/registration.json" in files, files
    return tags["git_commit"]


def _user_clone(bare, dest, env) -> None:
    """A person's clone of runs/latest with its ingested data pulled (what `mlops simulate` reads)."""
    run(["git", "clone", "-q", "--branch", "runs/latest", f"file://{bare}", str(dest)], dest.parent, env)
    run(["dvc", "remote", "add", "--local", "-d", "store", env["MLOPS_DVC_REMOTE"]], dest, env)
    run(["dvc", "remote", "modify", "--local", "store", "endpointurl", env["AWS_ENDPOINT_URL"]], dest, env)
    run(["dvc", "pull", "ingest"], dest, env)


def _latest_state(bare) -> dict:
    return json.loads(_git(bare, "show", "runs/latest:data/monitor/state.json"))


def _stream(user) -> tuple:
    """The held-out stream split of the user's clone: real test images and their true labels."""
    from pipeline.core import io

    return io.read_split(user / "data/ingested", "stream")


def _brightened(x):
    """The images 80 % brighter (the shift `mlops simulate --kind brightness --severity 0.8` makes)."""
    import numpy as np

    from pipeline.monitoring.simulate import apply_drift

    return apply_drift(x, np.zeros(len(x), dtype=np.int64), "brightness", 0.8, np.random.default_rng(0), 10)[0]


def _send(port: int, x, y, version: str | None = None) -> dict[str, int]:
    """POST the images to /predict as .npy, 8 per request; {captured image id: true label} (`<request id>-<i>`)."""
    import io as bytes_io

    import numpy as np

    truth = {}
    for at in range(0, len(x), 8):
        body = bytes_io.BytesIO()
        np.save(body, np.asarray(x[at:at + 8]))
        request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=body.getvalue(),
                                         headers={"Content-Type": "application/x-npy"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            answer = json.loads(resp.read())
        assert version is None or str(answer["version"]) == version, answer
        ids = [answer["request_id"]] if len(x[at:at + 8]) == 1 else [
            f"{answer['request_id']}-{i}" for i in range(len(x[at:at + 8]))]
        truth.update(zip(ids, (int(label) for label in y[at:at + 8]), strict=True))
    return truth


def _captured(services) -> list[str]:
    bucket, prefix = INBOX.removeprefix("s3://").split("/", 1)
    return [k for k in services.keys(bucket, prefix + "/captured/") if k.endswith(".npz") and "/rejected/" not in k]


def test_closed_loop_with_approval_deploy_serve_and_rollback(stack, tmp_path):
    from pipeline.core.config import load_params
    from pipeline.delivery import releases as deploy
    from pipeline.registry import promotion as promote

    work, env, start, logs, services = stack
    bare = services.git_remote
    params = load_params(work / "params.yaml")
    assert not any(services.worker_dir.iterdir()), "the worker starts in an empty directory"

    # 1. first training run: a fresh clone of the remote → commit on runs/<run> → challenger → approved → v1
    _run_deployment("training/training")
    v1_commit = _assert_committed(bare, "1")
    assert _git(bare, "rev-parse", "runs/latest") == v1_commit
    shots = tmp_path / "screenshots"
    _decide_in_browser(services, _paused_promotion(1), "approve", "alice", "first model, reviewed in the UI", shots)
    assert _champion() == "1" and _git(bare, "rev-parse", "champion") == v1_commit
    assert (promote.history(MODEL)[-1]["by"], promote.history(MODEL)[-1]["reason"]) == (
        "alice", "first model, reviewed in the UI"), "the audit record names the approver and the reason"
    assert deploy.read_pointer(params.deploy, MODEL)["version"] == "1", "the S3 pointer flipped to v1"

    port = free_port()
    start("serve", ["mlops", "serve", "--source", "s3", "--port", str(port)])
    health = _wait(lambda: _get_json(f"http://127.0.0.1:{port}/health"), 90, "the model server")
    assert str(health["version"]) == "1"

    # 2. nothing new: a training run reruns nothing, registers nothing, commits nothing
    _run_deployment("training/training")
    assert _versions() == ["1"] and set(_runs(bare)) == {_version_lineage("1")["git_ref"], "runs/latest"}

    # 3. real traffic: clean test images through HTTP → the server captures them into the S3 inbox (captured/) →
    #    the monitor watches them without labels: no drift, nothing enters training, no retrain
    user = tmp_path / "user"
    _user_clone(bare, user, env)
    stream_x, stream_y = _stream(user)
    sent = _send(port, stream_x[:120], stream_y[:120])
    _wait(lambda: len(_captured(services)) == 1, 60, "the server's capture of the clean traffic")
    _run_deployment("monitor/monitor", timeout=300)
    state = _latest_state(bare)
    assert not state["open_drift"] and state["new_labels"] == 0 and state["accepted"] == [], state
    assert _captured(services) == [] and len(_flow_runs("training")) == 2

    # 4. drifted traffic (brightness) → drift flagged without labels, a labelling request, still no retrain
    drifted = _brightened(stream_x[120:360])
    sent = _send(port, drifted[:120], stream_y[120:240])  # one captured file per 120 images: wait for each
    _wait(lambda: len(_captured(services)) == 1, 60, "the server's capture of the first drifted images")
    sent.update(_send(port, drifted[120:], stream_y[240:360]))
    _wait(lambda: len(_captured(services)) == 2, 60, "the server's capture of the drifted traffic")
    _run_deployment("monitor/monitor", timeout=300)
    state = _latest_state(bare)
    assert state["open_drift"] and state["label_requests"] and state["new_labels"] == 0, state
    asked = state["label_requests"][-1]
    assert "input.mean" in asked["signals"], asked
    request = json.loads(_git(bare, "show", f"runs/latest:data/monitor/label-requests/{asked['id']}.json"))
    assert {image["request_id"] for image in request["images"]} <= set(sent), request
    assert len(_flow_runs("training")) == 2, "drift without labels retrains nothing"

    #    labels come later: `mlops label --post` puts them into the inbox → joined → a retrain on the new data version
    answers = tmp_path / "labels.csv"
    answers.write_text("request_id,label\n" + "".join(f"{rid},{label}\n" for rid, label in sent.items()))
    posted = run(["mlops", "label", "--file", str(answers), "--post"], user, env)
    assert "s3://incoming/batches/labels/labels-" in posted.stdout, posted.stdout
    _run_deployment("monitor/monitor", timeout=300)
    trainings = _wait(lambda: len(_flow_runs("training")) >= 3 and _flow_runs("training"), 60, "a triggered retrain")
    assert _final(trainings[2].id, 900).state.is_completed()
    v2_commit = _assert_committed(bare, "2")
    _decide_in_browser(services, _paused_promotion(2), "approve", "alice", "retrained on labelled drifted traffic",
                       shots)
    assert _champion() == "2" and promote.aliases(MODEL)["previous"] == "1"
    assert _git(bare, "rev-parse", "champion") == v2_commit
    history = promote.history(MODEL)
    assert [(h["action"], h["by"]) for h in history] == [("approve", "alice"), ("approve", "alice")]
    assert history[-1]["diff"], "the audit record carries the metrics diff"
    assert deploy.read_pointer(params.deploy, MODEL)["version"] == "2"
    _wait(lambda: str((_get_json(f"http://127.0.0.1:{port}/health") or {}).get("version")) == "2", 60,
          "the server to pick up v2")
    answered = _send(port, stream_x[360:361], stream_y[360:361], version="2")
    assert len(answered) == 1, "the server answers with the new version"

    # 5. v2 rebuilt from the registry alone: clone its commit, dvc pull, dvc repro up to date, same .tflite
    started = time.monotonic()
    rebuilt = run(["mlops", "reproduce", "2", "--dest", str(tmp_path / "reproduce-v2")], work, env)
    report = json.loads(rebuilt.stdout[rebuilt.stdout.index("{\n"):])
    print(f"\n[e2e] mlops reproduce v2: {time.monotonic() - started:.1f} s, {report}")
    assert report["ok"] and report["up_to_date"] and report["sha256_match"] and report["commit"] == v2_commit
    manifest = json.loads((tmp_path / "reproduce-v2/data/ingested/manifest.json").read_text())
    assert manifest["monitoring"]["accepted"] == 240, "the labelled drifted captures, never the unlabelled clean ones"

    # 6. two training runs at once on two workers (concurrency limit raised to 2): two commits, both intact.
    #    Two more workers, one run each (--limit 1); the stack's worker is suspended meanwhile so they get both.
    extra = [tmp_path / f"worker-{i}" for i in (2, 3)]
    for i, folder in enumerate(extra, start=2):
        folder.mkdir()
        start(f"worker-{i}", ["prefect", "worker", "start", "--pool", "mlops-process", "--type", "process",
                              "--limit", "1"], cwd=folder, extra={"PREFECT_WORKER_QUERY_SECONDS": "2"})
    _set_concurrency("training/training", 2)
    stack_worker = services.pid("worker")
    os.killpg(stack_worker, signal.SIGSTOP)
    try:
        ids = [_start_deployment("training/training", {"overrides": {"train.epochs": epochs}}) for epochs in (2, 4)]
        finals = [_final(i, 900) for i in ids]
    finally:
        os.killpg(stack_worker, signal.SIGCONT)
    assert all(f.state.is_completed() for f in finals), [f.state for f in finals]
    assert _versions() == ["1", "2", "3", "4"]
    commits = {_assert_committed(bare, v) for v in ("3", "4")}
    assert len(commits) == 2 and all(_git(bare, "merge-base", "--is-ancestor", v2_commit, c) == "" for c in commits)
    _git(bare, "fsck", "--no-progress")
    ran = [{f.name for f in finals if f"Flow run '{f.name}'" in (logs / f"worker-{i}.log").read_text()} for i in (2, 3)]
    assert sorted(map(len, ran)) == [1, 1] and ran[0] != ran[1], f"one run on each worker: {ran}"
    starts = sorted(f.start_time for f in finals)
    assert starts[1] < min(f.end_time for f in finals), "the two runs overlapped in time"
    assert not any(services.worker_dir.iterdir()) and not any(any(f.iterdir()) for f in extra), "no worker keeps files"

    # 7. rollback restores the previous champion (alias and branch), audited, and the server follows
    run(["mlops", "rollback", "--by", "e2e-bot", "--reason", "drill", "--publish", "--remote", "stack"], work, env)
    assert _champion() == "1" and _git(bare, "rev-parse", "champion") == v1_commit
    assert promote.history(MODEL)[-1]["action"] == "rollback"
    _wait(lambda: str((_get_json(f"http://127.0.0.1:{port}/health") or {}).get("version")) == "1", 60,
          "the server to roll back to v1")

    # 7b. a rejection in the browser (v3 and v4 were not blessed, so v2 is offered again as the challenger):
    #     the alias is withdrawn, the audit names the approver and reason; champion and S3 pointer do not move
    from pipeline.registry import store

    store.client().set_registered_model_alias(MODEL, "challenger", "2")
    promo = _start_deployment("promotion/promotion", {"model_name": MODEL})
    waiting = _wait(lambda: (r := _flow_run(promo)).state.is_paused() and r, 300, "the promotion run to wait")
    _decide_in_browser(services, waiting, "reject", "bob", "v2 was rolled back: not again", shots)
    assert promote.aliases(MODEL)["challenger"] is None and _champion() == "1"
    assert [promote.history(MODEL)[-1][k] for k in ("action", "by", "reason")] == [
        "reject", "bob", "v2 was rolled back: not again"]
    assert _version_lineage("2")["promotion.decision"] == "rejected"
    assert deploy.read_pointer(params.deploy, MODEL)["version"] == "1", "a rejection publishes nothing"

    # 8. a cron schedule fires the monitor deployment, which completes
    before = len(_flow_runs("monitor"))
    run(["prefect", "deployment", "schedule", "create", "monitor/monitor", "--cron", "* * * * *", "-y"], work, env)

    def scheduled_completed():
        runs = _flow_runs("monitor")[before:]
        return any(r.auto_scheduled and r.state.is_completed() for r in runs)

    _wait(scheduled_completed, 240, "a scheduled monitor run to complete", interval=3)


def _flow_run(flow_run_id):
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def _set_concurrency(name: str, limit: int) -> None:
    from prefect import get_client
    from prefect.client.schemas.actions import DeploymentUpdate

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(name)
        client.update_deployment(deployment.id, DeploymentUpdate(concurrency_limit=limit))


def _start_deployment(name: str, parameters: dict):
    from prefect.deployments import run_deployment

    return run_deployment(name, parameters=parameters, timeout=0, as_subflow=False).id

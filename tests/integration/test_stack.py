"""The local stack (infra/local/stack.sh) for real: nanio S3 + MLflow server + Prefect server and worker.

One stack per module, on free ports with its own state dir and credentials file, serving a fresh copy of the
project: `up` / `up` again / status / a port conflict; the pipeline against the MLflow server (model artifacts
land in the S3 bucket, the client has no S3 keys); `dvc push` then `dvc pull` into a fresh clone; S3 killed
before a push; MLflow or S3 down during `mlops register` (no version without artifacts); `down`.
The tests run in file order and build on each other's state (pytest -x stops at the first failure).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.helpers_project import FASHION_MNIST, make_project, small_params
from tests.helpers_stack import SERVICES, Stack, _distinct_free_ports

MODEL = "stack-classifier"
PARAMS = small_params(MODEL, "stack")

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("curl") is None or shutil.which("setsid") is None,
                                 reason="stack.sh needs curl and setsid")]


def _port_free(port: int) -> bool:
    """Nothing listens on the port and a server could bind it (SO_REUSEADDR, as servers do: connections the
    stopped server closed may linger in TIME_WAIT without holding the port)."""
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return False
    except ProcessLookupError:
        return True
    except PermissionError:
        return False


def _kill_group(pid: int) -> None:
    """SIGKILL a service's process group (a crash, not a shutdown) and wait until it is gone."""
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while not _group_gone(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _group_gone(pid)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if FASHION_MNIST is None:  # the workspace's default ingest.source is materialised from it
        pytest.skip("needs the Fashion-MNIST files (make dataset)")
    base = tmp_path_factory.mktemp("stack")
    stack = Stack(base, make_project(base, PARAMS))
    try:
        stack.first_up, stack.first_up_seconds = stack.up()
        print(f"\n[stack] first up: {stack.first_up_seconds:.1f} s\n{stack.first_up.stdout}")
        yield stack
    finally:
        stack.sh("down", timeout=120)
        for pid in stack.pids().values():  # belt and braces: never leave a server behind
            if pid and not _group_gone(pid):
                os.killpg(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def pipeline(stack):
    """`dvc repro` of the small pipeline in the stack's workspace, against the MLflow server (once)."""
    started = time.monotonic()
    result = stack.run(["dvc", "repro"])
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}\n{stack.logs()}"
    print(f"\n[stack] dvc repro against the stack: {time.monotonic() - started:.1f} s")
    record = json.loads((stack.work / "reports/registration.json").read_text())
    assert record["alias"] is None, "register sets no alias: the run is not a pushed commit yet"
    committed = stack.run(["mlops", "commit-run", "--remote", "stack", "--name", "stack-test"])
    assert committed.returncode == 0, committed.stdout + committed.stderr
    return {**record, **json.loads(committed.stdout.strip().splitlines()[-1])}


def _mlflow_client(stack):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=stack.mlflow_url, registry_uri=stack.mlflow_url)


def _artifact_prefix(stack, model_source: str) -> str:
    """'models:/m-…' → the S3 key prefix of that logged model in the mlflow-artifacts bucket."""
    client = _mlflow_client(stack)
    location = client.get_logged_model(model_source.removeprefix("models:/")).artifact_location
    assert location.startswith("mlflow-artifacts:/"), location  # proxied: the client never saw S3
    return location.removeprefix("mlflow-artifacts:/").strip("/") + "/"


# ------------------------------------------------------------------------------------------------ up


def test_up_starts_every_service_and_keeps_the_secret_private(stack):
    out = stack.first_up.stdout
    for line in ("S3: nanio running",
                 "S3 buckets: dvc-store (created), mlflow-artifacts (created), models (created), incoming (created)",
                 "MLflow server: running", "Prefect server: running", "Prefect worker: running",
                 f"in {stack.worker_dir}, pool", f"git: remote stack = file://{stack.git_remote}",
                 "deployments applied", "DVC remote 'store'", "stack up in"):
        assert line in out, out
    assert stack.cred_file.stat().st_mode & 0o777 == 0o600
    key, secret = stack.credentials()

    printed = stack.sh("env")
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout
    assert f"export MLFLOW_TRACKING_URI={stack.mlflow_url}" in lines
    assert f"export PREFECT_API_URL=http://127.0.0.1:{stack.prefect_port}/api" in lines
    assert f"export AWS_ENDPOINT_URL={stack.s3_url}" in lines
    assert f"export AWS_ACCESS_KEY_ID={key}" in lines
    assert str(stack.cred_file) in next(line for line in lines.splitlines() if "AWS_SECRET_ACCESS_KEY" in line)
    client = stack.client_env()
    assert client["AWS_SECRET_ACCESS_KEY"] == secret and client["MLFLOW_TRACKING_URI"] == stack.mlflow_url

    # DVC: the remote lives in the git-ignored .dvc/config.local of the workspace
    local = (stack.work / ".dvc/config.local").read_text()
    assert "url = s3://dvc-store/mlops-pipeline" in local and f"endpointurl = {stack.s3_url}" in local
    assert (stack.work / ".dvc/config.local").stat().st_mode & 0o777 == 0o600
    assert "/config.local" in (stack.work / ".dvc/.gitignore").read_text().split()
    assert secret not in (stack.work / ".dvc/config").read_text()

    # Prefect: the three deployments of prefect.yaml, a ready work pool
    import urllib.request

    api = f"http://127.0.0.1:{stack.prefect_port}/api"
    request = urllib.request.Request(f"{api}/deployments/filter", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        deployments = json.loads(resp.read())
    assert {d["name"] for d in deployments} == {"training", "monitor", "promotion", "promotion-expiry"}
    clones = {step["prefect.deployments.steps.git_clone"]["repository"] for d in deployments for step in d["pull_steps"]}
    assert clones == {f"file://{stack.git_remote}"}  # every run clones the stack's git remote: no shared workspace
    assert {d["parameters"].get("remote") for d in deployments} == {"origin"}
    branch = subprocess.run(["git", "-C", str(stack.work), "symbolic-ref", "--short", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
    seeded = subprocess.run(["git", "-C", str(stack.git_remote), "rev-parse", branch], capture_output=True, text=True)
    head = subprocess.run(["git", "-C", str(stack.work), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert seeded.stdout == head.stdout, "the git remote holds the project's branch"
    with urllib.request.urlopen(f"{api}/work_pools/mlops-process", timeout=10) as resp:
        assert json.loads(resp.read())["status"] == "READY"

    assert all(secret not in text for text in stack.outputs), "the S3 secret was printed"


def test_up_again_is_idempotent_and_status_reports_every_service(stack):
    before = stack.pids()
    assert all(before.values()), before
    result, elapsed = stack.up()
    print(f"\n[stack] second up: {elapsed:.1f} s")
    assert result.stdout.count("already running") == 3, result.stdout
    assert "already applied" in result.stdout and "(created)" not in result.stdout
    assert stack.pids() == before
    assert elapsed < 30, f"a second up took {elapsed:.1f} s"
    status = stack.sh("status")
    assert status.returncode == 0, status.stdout
    assert status.stdout.count(": running") == 4, status.stdout
    moved = stack.sh("up", env={"MLFLOW_PORT": str(_distinct_free_ports(1)[0])})
    assert moved.returncode != 0 and f"runs with MLFLOW_PORT={stack.mlflow_port}" in moved.stderr, moved.stderr
    assert stack.pids() == before


def test_a_port_in_use_is_named_and_nothing_is_started(stack, tmp_path):
    other = tmp_path / "other-stack"
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        busy = blocker.getsockname()[1]
        free = _distinct_free_ports(1)[0]
        # MLflow's port is held by a plain socket, S3's by the running stack (not this state dir's process)
        result = stack.sh("up", env={"STACK_DIR": str(other), "MLFLOW_PORT": str(busy),
                                     "S3_PORT": str(stack.s3_port), "PREFECT_PORT": str(free)})
    assert result.returncode != 0
    assert f"port {busy} (MLflow, MLFLOW_PORT) on 127.0.0.1 is already in use" in result.stderr, result.stderr
    assert f"port {stack.s3_port} (S3, S3_PORT)" in result.stderr, result.stderr
    assert "nothing was started" in result.stderr
    assert not list(other.glob("run/*.pid")) and not (other / "s3").exists()
    assert _port_free(free)


# ------------------------------------------------------------------------------------------------ pipeline


def test_the_pipeline_registers_through_the_server_with_artifacts_in_s3(stack, pipeline):
    assert pipeline["model_name"] == MODEL and pipeline["alias"] == "challenger"
    client = _mlflow_client(stack)
    version = client.get_model_version(MODEL, str(pipeline["version"]))
    # the run is a commit on the stack's git remote, its data in the DVC remote; then (only then) challenger
    assert version.tags["git_commit"] == pipeline["commit"] and version.tags["git_dirty"] == "false"
    assert version.tags["git_ref"] == "runs/stack-test"
    remote_head = subprocess.run(["git", "-C", str(stack.git_remote), "rev-parse", "runs/stack-test"],
                                 capture_output=True, text=True, check=True).stdout.strip()
    assert remote_head == pipeline["commit"]
    prefix = _artifact_prefix(stack, version.source)
    model_keys = stack.keys("mlflow-artifacts", prefix)
    names = {key[len(prefix):] for key in model_keys}
    assert "MLmodel" in names and "artifacts/labels.json" in names, names
    assert any(n.startswith("artifacts/") and n.endswith(".tflite") for n in names), names
    run_keys = stack.keys("mlflow-artifacts", f"{pipeline['experiment_id']}/{pipeline['run_id']}/artifacts/")
    assert any(k.endswith("lineage/dvc.lock") for k in run_keys), run_keys
    assert not (stack.work / "mlflow").exists(), "the client wrote an embedded store instead of using the server"
    listing = stack.keys("mlflow-artifacts")
    print(f"\n[stack] s3://mlflow-artifacts ({len(listing)} objects):\n  " + "\n  ".join(listing))


def test_dvc_push_then_pull_into_a_fresh_clone_restores_data_and_models(stack, pipeline, tmp_path):
    work = stack.work
    for cmd in (["git", "add", "-A"], ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "repro"]):
        subprocess.run(cmd, cwd=work, check=True, capture_output=True)
    started = time.monotonic()
    pushed = stack.run(["dvc", "push"])
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    print(f"\n[stack] dvc push: {time.monotonic() - started:.1f} s: {pushed.stdout.strip().splitlines()[-1:]}")
    assert stack.keys("dvc-store", "mlops-pipeline/files/md5/")

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(work), str(clone)], check=True, capture_output=True)
    assert not (clone / "data/ingested").exists() and not (clone / "models/model.keras").exists()
    remote = stack.sh("remote", str(clone))
    assert remote.returncode == 0, remote.stderr
    started = time.monotonic()
    pulled = stack.run(["dvc", "pull"], cwd=clone)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    print(f"[stack] dvc pull into a fresh clone: {time.monotonic() - started:.1f} s")

    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    restored = [p.relative_to(work) for d in ("data/ingested", "data/prepared", "models") for p in (work / d).rglob("*")
                if p.is_file()]
    assert any(str(p).startswith("data/ingested/") for p in restored)
    assert Path("models/model.keras") in restored
    for rel in restored:
        assert (clone / rel).is_file(), f"{rel} not restored"
        assert digest(clone / rel) == digest(work / rel), f"{rel} differs"
    print(f"[stack] restored {len(restored)} files byte-identical: " + ", ".join(sorted(map(str, restored))))


def test_a_push_while_s3_is_down_fails_clearly_and_completes_after_restart(stack, pipeline):
    extra = stack.work / "data/extra.bin"
    extra.write_bytes(os.urandom(256 * 1024))
    added = stack.run(["dvc", "add", "data/extra.bin"])
    assert added.returncode == 0, added.stderr
    others = {name: stack.pid(name) for name in SERVICES}

    _kill_group(stack.pid("nanio"))
    started = time.monotonic()
    failed = stack.run(["dvc", "push"], timeout=180)
    elapsed = time.monotonic() - started
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0, output
    assert f"127.0.0.1:{stack.s3_port}" in output and "Could not connect" in output, output[-2000:]
    assert elapsed < 90, f"a push against a dead S3 took {elapsed:.0f} s to fail"
    status = stack.sh("status")
    assert status.returncode == 3 and "S3: stopped" in status.stdout

    stack.up()  # restarts only what is missing
    assert {name: stack.pid(name) for name in SERVICES} == others
    pushed = stack.run(["dvc", "push"])
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert "1 file pushed" in pushed.stdout, pushed.stdout
    in_sync = stack.run(["dvc", "status", "--cloud"])
    assert in_sync.returncode == 0 and "in sync" in in_sync.stdout, in_sync.stdout


def test_register_fails_clearly_when_mlflow_or_s3_is_down_and_no_version_lacks_artifacts(stack, pipeline):
    client = _mlflow_client(stack)
    versions = {v.version for v in client.search_model_versions(f"name='{MODEL}'")}
    fail_fast = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}  # default: 7 retries with backoff, >4 min to fail
    out = stack.work / "reports/registration-fault.json"
    # without dvc.lock there is no lineage key, so register cannot reuse the version the pipeline registered: it
    # must log and register anew, which is what the faults below interrupt
    lock = stack.work / "dvc.lock"
    lock.rename(stack.work / "dvc.lock.aside")
    try:
        _register_with_services_down(stack, out, fail_fast)
    finally:
        (stack.work / "dvc.lock.aside").rename(lock)
    assert {v.version for v in client.search_model_versions(f"name='{MODEL}'")} == versions
    for version in client.search_model_versions(f"name='{MODEL}'"):  # every version has its files in S3
        assert "MLmodel" in {k.rsplit("/", 1)[-1] for k in stack.keys("mlflow-artifacts",
                                                                           _artifact_prefix(stack, version.source))}
    runs = client.search_runs([pipeline["experiment_id"]], order_by=["attributes.start_time DESC"])
    print("[stack] runs:", [(r.info.run_id[:8], r.info.status, r.data.tags.get("registered_version")) for r in runs])
    assert runs and runs[0].info.status == "FAILED", "the interrupted run is marked FAILED"


def _register_with_services_down(stack, out, fail_fast) -> None:
    """`mlops register` with the MLflow server down, then with its S3 down: each fails clearly, writes nothing."""
    # 1. the MLflow server is gone: the first call fails, naming the server
    _kill_group(stack.pid("mlflow"))
    started = time.monotonic()
    failed = stack.run(["mlops", "register", "--out", str(out)], env=fail_fast, timeout=300)
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0
    assert f"127.0.0.1:{stack.mlflow_port}" in output, output[-2000:]
    assert "Connection refused" in output or "not reachable" in output, output[-2000:]
    assert not out.exists()
    print(f"\n[stack] mlops register with MLflow down failed after {time.monotonic() - started:.1f} s")

    # 2. MLflow is back but its artifact store (S3) is down: the run fails before a version is created.
    #    (One retry: with none, a keep-alive connection the server dropped after its 500 also fails the final
    #    end_run(FAILED) call and leaves the run RUNNING.)
    stack.up()
    _kill_group(stack.pid("nanio"))
    started = time.monotonic()
    failed = stack.run(["mlops", "register", "--out", str(out)], timeout=300,
                       env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"})
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0, output[-2000:]
    assert not out.exists()
    print(f"[stack] mlops register with S3 down behind MLflow failed after {time.monotonic() - started:.1f} s: "
          f"{output.strip().splitlines()[-1][:300]}")
    stack.up()


# ------------------------------------------------------------------------------------------------ zombie flow run

DRILL_FLOW = """import time

from prefect import flow


@flow
def zombie_drill(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
"""
DRILL_WINDOW = 45  # the automation's window in this drill (the shipped file: 240 s); heartbeats every 30 s


def test_a_zombie_flow_run_whose_worker_host_died_is_crashed_and_a_rerun_completes(stack, tmp_path):
    """The worker and its flow-run process are killed with SIGKILL, as when their machine or container dies: the
    run's heartbeats stop, the automation `up` applied (infra/prefect/automations/zombie-flow-runs.yaml) marks it
    Crashed instead of leaving it Running forever; `up` restarts the worker and a rerun completes."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows import automations

    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{stack.prefect_port}/api"}):
        shipped = automations.load(automations.ZOMBIE_FLOW_RUNS).name
        # `up` created it; the drill shortens its window (same code path as `up`), and restores it at the end
        assert automations.apply([automations.ZOMBIE_FLOW_RUNS], within=DRILL_WINDOW) == {shipped: "updated"}
        try:
            seconds = _zombie_drill(stack, tmp_path)
        finally:
            automations.apply([automations.ZOMBIE_FLOW_RUNS])  # back to the shipped window
        assert automations.apply() == {shipped: "unchanged"}, "applying the shipped files again changes nothing"
    print(f"\n[stack] flow run Crashed {seconds:.1f} s after its worker died (window {DRILL_WINDOW} s)")


def _zombie_drill(stack, tmp_path) -> float:
    """Deploy the drill flow, kill its run's worker and process, wait for Crashed, rerun; seconds to Crashed."""
    from prefect import flow, get_client
    from prefect.deployments import run_deployment

    source = tmp_path / "drill"
    source.mkdir()
    (source / "zombie_drill.py").write_text(DRILL_FLOW)
    flow.from_source(source=str(source), entrypoint="zombie_drill.py:zombie_drill").deploy(
        name="zombie-drill", work_pool_name="mlops-process", print_next_steps=False, ignore_warnings=True)
    run = run_deployment("zombie-drill/zombie-drill", parameters={"seconds": 900}, timeout=0, as_subflow=False)
    worker = stack.pid("worker")
    with get_client(sync_client=True) as client:
        try:
            seconds = _crash_and_wait(stack, client, run.id)
        finally:  # a flow-run process outlives its worker (own session) and `down`: never leave one behind
            pid = client.read_flow_run(run.id).infrastructure_pid
            with contextlib.suppress(ProcessLookupError, ValueError, TypeError):
                os.killpg(os.getpgid(int(pid)), signal.SIGKILL)

    stack.up()  # restarts what is not running: the worker
    assert stack.pid("worker") not in (None, worker)
    rerun = run_deployment("zombie-drill/zombie-drill", parameters={"seconds": 1}, timeout=300, as_subflow=False)
    assert rerun.state.is_completed(), rerun.state
    return seconds


def _crash_and_wait(stack, client, run_id) -> float:
    """Once the run is Running and heartbeating: kill -9 its worker, then its process; seconds until Crashed."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    def running_and_beating():
        current = client.read_flow_run(run_id)
        beats = EventFilter(event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),  # its `until` is now
                            resource=EventResourceFilter(id=[f"prefect.flow-run.{run_id}"]))
        return (current.state.is_running() and current.infrastructure_pid
                and client.read_events(beats, limit=1).events and current)

    current = _wait_for(running_and_beating, 180, "the drill run to be Running with a heartbeat")
    run_pid = int(current.infrastructure_pid)
    _kill_group(stack.pid("worker"))
    os.kill(run_pid, 0)  # still there: the flow-run process lives in its own session, apart from its worker
    _kill_group(os.getpgid(run_pid))  # its host is gone too
    killed = time.monotonic()
    assert client.read_flow_run(run_id).state.is_running()
    crashed = _wait_for(lambda: (fr := client.read_flow_run(run_id)).state.is_final() and fr,
                        DRILL_WINDOW + 60, "the silent run to reach a final state")
    seconds = time.monotonic() - killed
    assert crashed.state.is_crashed(), crashed.state
    assert "heartbeat" in (crashed.state.message or ""), crashed.state.message
    assert seconds <= DRILL_WINDOW + 30, f"Crashed only {seconds:.0f} s after the kill"
    return seconds


def _wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# ------------------------------------------------------------------------------------------------ approval waits

APPROVAL_TIMEOUT = 45  # the promotion run's timeout_s in this drill (the flow's default: 7 days)
REMINDER_WINDOW = 15  # the reminder automation's window in this drill (the shipped file: 1 day)


class _Webhook:
    """A local HTTP receiver standing in for the approval webhook: every POSTed JSON body, with when it came
    (wall clock, comparable with the Prefect states' timestamps on this machine)."""

    def __init__(self):
        import http.server
        import threading

        received = self.received = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append((time.time(), json.loads(body or b"{}")))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/approvals"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def first(self, *words: str) -> tuple[float, dict] | None:
        """The first notification whose text holds every word, else None."""
        return next(((t, body) for t, body in self.received if all(w in body.get("text", "") for w in words)), None)

    def count(self, subject_start: str) -> int:
        """How many notifications had a subject starting with `subject_start`."""
        return sum(body.get("subject", "").startswith(subject_start) for _, body in self.received)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_promotion_nobody_answers_is_announced_reminded_and_rejected_by_timeout(stack, pipeline):
    """The promotion deployment's run waits (suspended) for a decision nobody gives: the webhook hears that it
    awaits approval (model, version, UI link), then a reminder; at its timeout the server fails the run, the
    automation (infra/prefect/automations/promotion-timeout.yaml) runs promotion-expiry, which writes an audited
    rejection by "timeout", and the webhook hears of it. Applying the shipped files again changes nothing."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows import automations

    challenger = _mlflow_client(stack).get_model_version_by_alias(MODEL, "challenger").version
    hook = _Webhook()
    try:
        with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{stack.prefect_port}/api"}):
            done = automations.apply_files(webhook_url=hook.url)  # what `up` does with MLOPS_APPROVAL_WEBHOOK_URL
            assert done.skipped == {} and done.approval_block == "created", done
            reminder = automations.load(automations.APPROVAL_REMINDER, resolver=_ids()).name
            assert automations.apply([automations.APPROVAL_REMINDER], within=REMINDER_WINDOW,
                                     webhook_url=hook.url) == {reminder: "updated"}
            try:
                times = _unanswered_promotion(stack, hook, str(challenger))
            finally:
                automations.apply([automations.APPROVAL_REMINDER], webhook_url=hook.url)  # the shipped window
            again = automations.apply(webhook_url=hook.url)
            assert set(again.values()) == {"unchanged"} and len(again) == len(list(automations.AUTOMATIONS_DIR.glob(
                "*.yaml"))), again
    finally:
        hook.close()
    print(f"\n[stack] promotion run suspended → 'awaits approval' notification {times['notified']:.1f} s, "
          f"reminder {times['reminded']:.1f} s (window {REMINDER_WINDOW} s); deadline (timeout {APPROVAL_TIMEOUT} s) → "
          f"run Failed by the server {times['failed']:.1f} s; Failed → audited rejection by timeout "
          f"{times['audited']:.1f} s, → its notification {times['told']:.1f} s")
    for _, body in hook.received:
        print(f"[stack] webhook: {body['text']!r}")


def _ids():
    """A resolver that names nothing on the server: loads a file only to read its name."""
    import uuid

    return lambda kind, name: str(uuid.uuid4())


def _unanswered_promotion(stack, hook: _Webhook, version: str) -> dict[str, float]:
    """Run the promotion deployment with a short timeout and answer nothing; seconds from the suspension (and from
    the deadline) to each thing that must follow."""
    from prefect import get_client
    from prefect.deployments import run_deployment

    run = run_deployment("promotion/promotion", parameters={"timeout_s": APPROVAL_TIMEOUT}, timeout=0,
                         as_subflow=False)
    with get_client(sync_client=True) as client:
        def state():
            return client.read_flow_run(run.id).state

        waiting = _wait_for(lambda: (s := state()) and (s.is_paused() or s.is_final()) and s, 180,
                            "the promotion run to wait for its decision")
        assert waiting.is_paused(), f"the run did not wait: {waiting}"
        suspended, deadline = waiting.timestamp.timestamp(), waiting.state_details.pause_timeout.timestamp()
        assert {"mlops.awaiting-approval", f"mlops.model:{MODEL}", f"mlops.version:{version}"} <= set(
            client.read_flow_run(run.id).tags)  # what promotion-expiry reads
        notified = _wait_for(lambda: hook.first("awaits approval", MODEL, f"v{version}"), 60,
                             "the 'awaits approval' notification")
        assert f"/runs/flow-run/{run.id}" in notified[1]["text"], notified  # the run's UI link
        reminded = _wait_for(lambda: hook.first("reminder", MODEL, f"v{version}"), REMINDER_WINDOW + 60,
                             "the reminder")
        failed = _wait_for(lambda: (s := state()).is_final() and s, APPROVAL_TIMEOUT + 60,
                           "the server to fail the expired run")
        assert failed.is_failed() and "paused and never resumed" in (failed.message or ""), failed
        audit = _wait_for(lambda: _timeout_rejection(stack, version), 120, "the audited rejection by timeout")
        told = _wait_for(lambda: hook.first("reject by timeout", MODEL, f"v{version}"), 60,
                         "the notification of the rejection by timeout")
    assert f"no decision within {APPROVAL_TIMEOUT} s" in audit["reason"], audit
    assert hook.first("approval deadline passed", run.name), [b for _, b in hook.received]
    subjects = (f"{MODEL} v{version} awaits approval", "reminder: ", f"promotion run {run.name}: approval deadline",
                f"{MODEL} v{version}: reject by timeout")
    for subject in subjects:  # each once per wait
        assert hook.count(subject) == 1, (subject, [b["subject"] for _, b in hook.received])
    assert len(hook.received) == len(subjects), [b["subject"] for _, b in hook.received]
    aliases = json.loads(stack.run([sys.executable, "-c", ALIASES]).stdout.strip().splitlines()[-1])
    assert aliases["challenger"] is None, aliases  # withdrawn: the next promotion needs a new challenger
    ended = failed.timestamp.timestamp()
    return {"notified": notified[0] - suspended, "reminded": reminded[0] - suspended, "failed": ended - deadline,
            "audited": datetime.fromisoformat(audit["at"]).timestamp() - ended, "told": told[0] - ended}


HISTORY = f"import json; from pipeline.registry import promotion; print(json.dumps(promotion.history({MODEL!r})))"
ALIASES = f"import json; from pipeline.registry import promotion; print(json.dumps(promotion.aliases({MODEL!r})))"


def _timeout_rejection(stack, version: str) -> dict | None:
    """The audit record rejecting `version` by "timeout" (read from the MLflow server, as a user would), or None."""
    result = stack.run([sys.executable, "-c", HISTORY], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    history = json.loads(result.stdout.strip().splitlines()[-1])
    return next((r for r in history if r["action"] == "reject" and r["by"] == "timeout"
                 and r["versions"].get("challenger") == version), None)



# ------------------------------------------------------------------------------------------------ down


def test_down_stops_everything_it_started_and_nothing_else(stack):
    bystander = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        groups = stack.pids()
        assert all(groups.values()), groups
        started = time.monotonic()
        result = stack.sh("down", timeout=120)
        print(f"\n[stack] down: {time.monotonic() - started:.1f} s\n{result.stdout}")
        assert result.returncode == 0, result.stderr
        for name, pgid in groups.items():
            assert _group_gone(pgid), f"{name} (process group {pgid}) still alive"
        for port in (stack.s3_port, stack.mlflow_port, stack.prefect_port):
            assert _port_free(port), f"port {port} still taken"
        assert bystander.poll() is None, "down stopped a process it did not start"
        status = stack.sh("status")
        assert status.returncode == 3 and status.stdout.count(": stopped") == 4, status.stdout
        again = stack.sh("down")
        assert again.returncode == 0 and "not running" in again.stdout
    finally:
        bystander.kill()
        bystander.wait()

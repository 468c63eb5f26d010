"""Faults injected into real runs: each one recovers or fails clearly; nothing is lost, nothing half-promoted.

* (`kill -9` of `mlops train`, `mlops compress` and `dvc repro` at seeded random moments: test_fault_trials_stages.py)
* `kill -9` of `mlops register` while logging → no model version without its files; a rerun completes;
* the S3 server stops during a publish → clear StageError, the live pointer still valid, a retry completes;
* the MLflow server is down → register / promote fail at the first call, quickly, clearly, having written nothing;
* two training flows on one workspace → the second refuses (WorkspaceBusy), dvc.lock and params.yaml untouched.

A Prefect worker (and its flow-run process) killed mid-run → the zombie-run automation marks the run Crashed and a
rerun completes: tests/integration/test_stack.py, on the stack's real server and worker.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.core import io
from tests.reliability.common import (ROOT, bump, cli, kill_group, make_register_workspace, snapshot, start,
                                      subprocess_env, wait_for)

pytestmark = pytest.mark.integration


# --------------------------------------------------------------------------------------------- register


def _registry(work: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{work / 'mlflow' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_register_killed_while_logging_leaves_no_version_without_files(template, tmp_path, monkeypatch, tally):
    import mlflow

    from pipeline.registry import store as registry

    bump(tally, "faults_injected")
    name = "faults-register"
    work = make_register_workspace(tmp_path / "ws", template, name)
    cmd = [sys.executable, "-m", "pipeline.cli", "register"]
    log = tmp_path / "killed.log"
    proc = start(cmd, work, subprocess_env(), log)  # embedded store: ws/mlflow/mlflow.db + ws/mlflow/artifacts
    artifacts = work / "mlflow" / "artifacts"
    try:
        wait_for(lambda: artifacts.is_dir() and any(artifacts.rglob("MLmodel")), 240,
                 "the first logged model's files", interval=0.05, proc=proc, log=log)
    finally:
        kill_group(proc)  # kill -9 while the run logs its models
    client = _registry(work)
    half = client.search_model_versions(f"name='{name}'")
    assert not (work / "reports" / "registration.json").exists()

    rerun = subprocess.run(cmd, cwd=work, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    record = io.read_json(work / "reports" / "registration.json")
    versions = client.search_model_versions(f"name='{name}'")
    # a version the killed run completed carries the same lineage key: the rerun reuses it
    assert len(versions) == len(half) + (0 if record.get("reused") else 1)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow' / 'mlflow.db'}")
    registry.client()  # tracking *and* registry URI (an earlier test may have set another registry URI)
    for mv in versions:  # every version in the registry has all of its files
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{mv.version}",
                                                         dst_path=str(tmp_path / f"v{mv.version}")))
        assert (local / "MLmodel").is_file() and list(local.rglob("*.tflite")) and list(local.rglob("labels.json"))
    assert not client.get_registered_model(name).aliases, "no alias before the run is a pushed commit"
    killed_runs = [r for r in client.search_runs([record["experiment_id"]]) if r.info.run_id != record["run_id"]]
    assert killed_runs and all("registered_version" not in r.data.tags for r in killed_runs)
    bump(tally, "faults_survived")


def test_a_rejected_git_push_tags_the_version_push_failed_and_sets_no_alias(template, tmp_path, tally):
    """The git remote refuses the run's commit: the version stays unaliased, tagged push-failed; once the remote
    accepts, the same command commits it, clears the tag and only then sets challenger."""
    bump(tally, "faults_injected")
    name = "faults-push"
    work = make_register_workspace(tmp_path / "ws", template, name)
    bare = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    hook = bare / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'pushes are closed for maintenance' >&2\nexit 1\n")
    hook.chmod(0o755)

    def mlops(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=work, env=subprocess_env(),
                              capture_output=True, text=True, timeout=300)

    assert mlops("register").returncode == 0
    failed = mlops("commit-run", "--name", "r1", "--remote", f"file://{bare}")
    assert failed.returncode == 2 and "pushes are closed" in failed.stdout + failed.stderr, failed.stderr
    client = _registry(work)
    tags = client.get_model_version(name, "1").tags
    assert "push-failed" in tags and "git_commit" not in tags and tags["git.base_commit"], tags
    assert not client.get_registered_model(name).aliases, "a version whose run is not pushed is never aliased"

    hook.unlink()
    ok = mlops("commit-run", "--name", "r1", "--remote", f"file://{bare}")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    tags = client.get_model_version(name, "1").tags
    assert "push-failed" not in tags and tags["git_dirty"] == "false"
    assert subprocess.run(["git", "-C", str(bare), "rev-parse", "runs/r1"], capture_output=True, text=True,
                          check=True).stdout.strip() == tags["git_commit"]
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "1"
    bump(tally, "faults_survived")


# --------------------------------------------------------------------------------------------- S3 server


def test_s3_server_stopped_during_publish_keeps_the_live_release(tmp_path, template, monkeypatch, tally):
    from pipeline.delivery import releases as deploy, s3 as s3io
    from pipeline.core.config import DeployConfig
    from pipeline.core.errors import StageError
    from tests.helpers_s3 import start_s3_server

    bump(tally, "faults_injected")

    def use(server) -> None:
        endpoint, key, secret, _ = server
        for var, value in (("AWS_ACCESS_KEY_ID", key), ("AWS_SECRET_ACCESS_KEY", secret),
                           ("AWS_ENDPOINT_URL", endpoint), ("AWS_DEFAULT_REGION", "us-east-1")):
            monkeypatch.setenv(var, value)

    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    server = start_s3_server(tmp_path / "s3")
    stops = [server[3]]
    try:
        use(server)
        cfg, name, classes = DeployConfig(bucket="faults", prefix="models"), "m", ["cat", "dog", "bird"]
        deploy.publish(cfg, name, "1", template / "v1.tflite", classes, {}, {})

        s3 = s3io.s3_client(cfg)

        def stop_server(request, **_):  # the server goes away after model.tflite of v2 was uploaded
            if request.url.endswith("/releases/v2/labels.json"):
                stops[0]()

        s3.meta.events.register("before-send.s3.PutObject", stop_server)
        started = time.monotonic()
        with pytest.raises(StageError) as err:
            deploy.publish(cfg, name, "2", template / "v2.tflite", classes, {}, {}, s3=s3)
        assert "cannot reach the endpoint" in str(err.value) and "publish of m v2" in str(err.value)
        assert "S3 server running" in str(err.value) and time.monotonic() - started < 60

        server = start_s3_server(tmp_path / "s3")  # same data directory, new port and credentials
        stops.append(server[3])
        use(server)
        pointer = deploy.read_pointer(cfg, name)
        assert pointer["version"] == "1"
        path, manifest = deploy.fetch_current(cfg, name, tmp_path / "live")  # sha256-verified
        assert manifest["version"] == "1" and path.read_bytes() == (template / "v1.tflite").read_bytes()
        keys = [o["Key"] for o in s3io.s3_client(cfg).list_objects_v2(Bucket=cfg.bucket)["Contents"]]
        assert f"models/{name}/releases/v2/manifest.json" not in keys, "the interrupted release never completed"

        deploy.publish(cfg, name, "2", template / "v2.tflite", classes, {}, {})  # the retry
        path, manifest = deploy.fetch_current(cfg, name, tmp_path / "live")
        assert manifest["version"] == "2" and path.read_bytes() == (template / "v2.tflite").read_bytes()
        assert json.loads(s3io.s3_client(cfg).get_object(
            Bucket=cfg.bucket, Key=deploy.previous_key(cfg, name))["Body"].read())["version"] == "1"
    finally:
        for stop in stops:
            stop()
    bump(tally, "faults_survived")


# --------------------------------------------------------------------------------------------- MLflow server


@pytest.mark.parametrize("command", [["register"], ["promote", "--approve", "--by", "ops", "--reason", "drill"]],
                         ids=["register", "promote"])
def test_mlflow_server_down_fails_fast_and_clearly(command, template, tmp_path, monkeypatch, tally):
    from tests.helpers_s3 import free_port

    bump(tally, "faults_injected")
    work = make_register_workspace(tmp_path / "ws", template, "faults-mlflow-down")
    monkeypatch.chdir(work)
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    before = snapshot(work)

    started = time.monotonic()
    code, output = cli(*command)
    elapsed = time.monotonic() - started

    assert code == 2, output
    assert uri in output and "MLFLOW_TRACKING_URI" in output and "Traceback" not in output, output
    assert "cannot reach the MLflow tracking server" in output
    assert elapsed < 20, f"took {elapsed:.1f}s to fail"
    assert snapshot(work) == before, "nothing may be written (no record, no fallback to a local store)"
    bump(tally, "faults_survived")


# --------------------------------------------------------------------------------------------- one workspace, two flows

DVC_LOCK = """schema: '2.0'
stages:
  ingest:
    cmd: python -m pipeline.stages.ingest --out data/ingested
    deps:
    - path: pipeline/stages/ingest.py
      hash: md5
      md5: 5f6c2a4d0d8b0b1f9d4b0f7f2e3c1a90
      size: 10578
    outs:
    - path: data/ingested
      hash: md5
      md5: 0b1f9d4b0f7f2e3c1a905f6c2a4d0d8b.dir
      size: 1048576
      nfiles: 5
"""


def test_second_training_flow_on_a_busy_workspace_refuses_and_leaves_dvc_lock(tmp_path, tally):
    bump(tally, "faults_injected")
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "dvc.lock").write_text(DVC_LOCK)
    shutil.copy(ROOT / "params.yaml", ws / "params.yaml")
    before = {name: (ws / name).read_bytes() for name in ("dvc.lock", "params.yaml")}
    env = subprocess_env({"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                          "PREFECT_UI_ENABLED": "false"})
    holder = subprocess.Popen(  # the first flow, mid-run: holds the workspace lock as training_flow does
        [sys.executable, "-c", "import sys; from flows.common import workspace_lock\n"
                               "with workspace_lock(sys.argv[1]):\n    print('locked', flush=True); sys.stdin.read()",
         str(ws)], cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = subprocess.run(
            [sys.executable, "-c", "import sys; from flows.training import training_flow\n"
                                   "training_flow(project_dir=sys.argv[1], wait_for_workspace_s=0, "
                                   "overrides={'train.epochs': 1})", str(ws)],
            cwd=ws, env=env, capture_output=True, text=True, timeout=180)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    output = second.stdout + second.stderr
    assert second.returncode != 0, output[-3000:]
    assert "WorkspaceBusy" in output and f"workspace busy (pid {holder.pid})" in output, output[-3000:]
    assert "wait for it or use another clone" in output
    assert "Finished in state Failed" in output, output[-3000:]
    after = {name: (ws / name).read_bytes() for name in before}
    assert after == before, "the refused flow must not touch dvc.lock or apply its params overrides"
    assert yaml.safe_load(after["dvc.lock"])["stages"]["ingest"]["outs"][0]["path"] == "data/ingested"
    bump(tally, "faults_survived")

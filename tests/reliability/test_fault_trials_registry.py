"""Seeded random-moment fault trials of the registry and delivery operations, against real services (issue 13).

A real `mlflow server` (sqlite backend, artifacts served from a local folder) and a real nanio S3 server are started
once for the module and shared by every trial; each trial uses its own model name. Operations run as a user runs
them (`python -m pipeline.cli ...`, own process group):

* register, promote (approve → champion alias + audit) and deploy (S3 release + previous.json + pointer flip) are
  `kill -9`ed at a uniformly random moment of their measured duration (tests.reliability.trials);
* the MLflow *server* is `kill -9`ed at a random moment of register and of promote: the command fails clearly, the
  restarted server holds nothing half-done, and a rerun completes;
* the S3 server is killed before each request of a publish in turn (every step, also between previous.json and the
  pointer flip): the live pointer stays valid, a retry completes.

After every fault and after every rerun the invariants are checked: every model version has its files (downloaded,
sha256 as registered), aliases name complete versions, one version per lineage key, the S3 pointer (and
previous.json) name complete releases whose model.tflite has the manifest's sha256, and once the rerun is done no
run is left RUNNING by a process that is gone. Replay one trial: FAULT_TRIALS=1 FAULT_SEED=<seed> pytest <this file>.
"""

from __future__ import annotations

import collections
import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline.core import io
from tests.reliability.common import (CLASSES, MlflowServer, bump, make_register_workspace, subprocess_env,
                                      write_dvc_lock, write_yaml)
from tests.reliability.trials import (Trial, finish, kill_moment, measured, record, run_and_kill, run_with_fault,
                                      timed, trial_seeds)

pytestmark = pytest.mark.integration

MLOPS = [sys.executable, "-m", "pipeline.cli"]
APPROVE = ["promote", "--approve", "--by", "ops", "--reason", "drill"]
BUCKET, PREFIX = "faults", "models"
CLEAR_MLFLOW_ERROR = "cannot reach the MLflow tracking server"


# --------------------------------------------------------------------------------------------- services


@dataclass
class Services:
    """The module's MLflow and S3 servers, and the operations' measured durations."""

    root: Path
    mlflow: MlflowServer
    s3: tuple  # (endpoint, access key, secret, stop)
    stops: list = field(default_factory=list)
    durations: dict = field(default_factory=dict)

    def env(self) -> dict:
        """A user's environment: the MLflow server, the S3 endpoint and credentials, nothing else of AWS."""
        endpoint, key, secret, _ = self.s3
        env = subprocess_env({"MLFLOW_TRACKING_URI": self.mlflow.url, "AWS_ENDPOINT_URL": endpoint,
                              "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
                              "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": "/nonexistent/aws-config",
                              "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
                              "AWS_EC2_METADATA_DISABLED": "true"})
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            env.pop(var, None)
        return env

    def restart_s3(self) -> None:
        """Stop nanio (if running) and start it again on the same data (new port and credentials)."""
        from tests.helpers_s3 import start_s3_server

        self.s3[3]()
        self.s3 = start_s3_server(self.root / "s3")
        self.stops.append(self.s3[3])

    def s3_client(self):
        import boto3
        from botocore.config import Config

        endpoint, key, secret, _ = self.s3
        return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                            region_name="us-east-1", config=Config(s3={"addressing_style": "path"}))


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    from tests.helpers_s3 import start_s3_server

    root = tmp_path_factory.mktemp("fault-services")
    server = MlflowServer(root / "mlflow")
    s3 = start_s3_server(root / "s3")
    svc = Services(root, server, s3, stops=[s3[3]])
    try:
        server.start()
        yield svc
    finally:
        server.kill()
        for stop in svc.stops:
            stop()


# --------------------------------------------------------------------------------------------- registry invariants


def _aliases(client, name: str) -> dict[str, str]:
    from mlflow.exceptions import MlflowException

    try:
        return {a: str(v) for a, v in (client.get_registered_model(name).aliases or {}).items()}
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise


def _complete(server: MlflowServer, name: str, mv, scratch: Path) -> bool:
    """READY, and its files download: MLmodel, labels.json and one .tflite with the registered sha256."""
    import mlflow

    if mv.status != "READY":
        return False
    mlflow.set_tracking_uri(server.url)
    mlflow.set_registry_uri(server.url)
    dest = scratch / f"{name}-v{mv.version}-{len(list(scratch.glob('*')))}" if scratch.is_dir() else scratch / "0"
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{mv.version}", dst_path=str(dest)))
    tflites = sorted(local.rglob("*.tflite"))
    return ((local / "MLmodel").is_file() and len(tflites) == 1 and any(local.rglob("labels.json"))
            and io.sha256_file(tflites[0]) == mv.tags.get("model.sha256"))


def registry_invariants(server: MlflowServer, name: str, scratch: Path) -> dict[str, Callable[[], object]]:
    client = server.client()
    scratch.mkdir(parents=True, exist_ok=True)

    def versions():
        return client.search_model_versions(f"name='{name}'")

    def one_per_key() -> bool:
        keys = collections.Counter(mv.tags.get("lineage.key") for mv in versions() if mv.tags.get("lineage.key"))
        return max(keys.values(), default=1) == 1

    return {
        "every version has its files": lambda: all(_complete(server, name, mv, scratch) for mv in versions()),
        "aliases name complete versions": lambda: all(_complete(server, name, client.get_model_version(name, v), scratch)
                                                      for v in _aliases(client, name).values()),
        "one version per lineage key": one_per_key,
    }


def no_running_run(server: MlflowServer, experiments: list[str]) -> bool:
    """No run left RUNNING (every process that started one in these experiments has ended by now)."""
    client = server.client()
    ids = [e.experiment_id for n in experiments if (e := client.get_experiment_by_name(n)) is not None]
    return not ids or not client.search_runs(ids, "attributes.status = 'RUNNING'")


# --------------------------------------------------------------------------------------------- register


def _register_workspace(root: Path, template: Path, name: str) -> Path:
    work = make_register_workspace(root / "ws", template, name)
    write_dvc_lock(work, salt=name)
    return work


def _registered_once(server: MlflowServer, name: str, work: Path) -> bool:
    """One version carries the workspace's lineage key; the record, its tags and its run say so; the run FINISHED."""
    from pipeline.registry.lineage import lineage_key

    client = server.client()
    key = lineage_key(work / "dvc.lock")
    found = client.search_model_versions(f"name='{name}' and tags.`lineage.key` = '{key}'")
    if len(found) != 1:
        return False
    mv, rec = found[0], io.read_json(work / "reports" / "registration.json")
    run = client.get_run(mv.tags["source_run_id"])
    return (str(rec["version"]) == str(mv.version) and rec["lineage_key"] == key and run.info.status == "FINISHED"
            and run.data.tags.get("registered_version") == str(mv.version) and mv.run_id == run.info.run_id)


def _register_duration(services: Services, template: Path, root: Path) -> float:
    work = _register_workspace(root / "measure-register", template, "measure-register")
    return timed(MLOPS + ["register"], work, services.env(), root / "measure-register.log")


@pytest.mark.parametrize("seed", trial_seeds())
def test_register_killed_at_a_random_moment(seed, services, template, tmp_path, fault_table, tally):
    duration = measured(services.durations, "register", lambda: _register_duration(services, template, tmp_path))
    name = f"register-s{seed}"
    work, env = _register_workspace(tmp_path, template, name), services.env()
    trial = Trial("register", seed, kill_moment("register", seed, duration))
    bump(tally, "faults_injected")
    trial.killed = run_and_kill(MLOPS + ["register"], work, env, tmp_path / "killed.log", trial.kill_at)
    invariants = registry_invariants(services.mlflow, name, tmp_path / "check")
    trial.check(invariants, "after kill")
    rc, _ = finish(MLOPS + ["register"], work, env, tmp_path / "rerun.log")
    trial.check({**invariants, "rerun completed": lambda: rc == 0,
                 "registered once, recorded, run finished": lambda: _registered_once(services.mlflow, name, work),
                 "no run left RUNNING": lambda: no_running_run(services.mlflow, [f"{name}-exp"])}, "after rerun")
    record(fault_table, trial)
    bump(tally, "faults_survived")


# --------------------------------------------------------------------------------------------- seeded registry state


def _model_dir(root: Path, tflite: Path) -> Path:
    """The files of a registered classifier (as register logs them): MLmodel, artifacts/<variant>.tflite, labels."""
    model = root / tflite.stem
    (model / "artifacts").mkdir(parents=True, exist_ok=True)
    (model / "MLmodel").write_text("flavors: {}\n")
    (model / "artifacts" / "fp32.tflite").write_bytes(tflite.read_bytes())
    (model / "artifacts" / "labels.json").write_text(json.dumps(CLASSES))
    return model


def seed_model(services: Services, template: Path, name: str, root: Path) -> None:
    """`name` with v1 (champion, template v1.tflite) and v2 (challenger, v2.tflite), both blessed and complete."""
    client = services.mlflow.client()
    experiment = client.create_experiment(f"{name}-exp")
    client.create_registered_model(name)
    for n, tflite in ((1, template / "v1.tflite"), (2, template / "v2.tflite")):
        run = client.create_run(experiment)
        for key, value in {"eval.accuracy": 0.9 + n / 100, "eval.per_class.cat.recall": 0.9,
                           "compress.variants.fp32.bytes": float(tflite.stat().st_size)}.items():
            client.log_metric(run.info.run_id, key, value)
        client.log_artifacts(run.info.run_id, str(_model_dir(root, tflite)), "classifier")
        client.set_terminated(run.info.run_id)
        tags = {"eval.blessed": "true", "model.deploy_variant": "fp32", "model.sha256": io.sha256_file(tflite),
                "lineage.key": hashlib.sha256(f"{name}-{n}".encode()).hexdigest()[:16],
                "source_run_id": run.info.run_id, "data.manifest_checksum": "seeded"}
        client.create_model_version(name, f"runs:/{run.info.run_id}/classifier", run.info.run_id, tags=tags)
    client.set_registered_model_alias(name, "champion", "1")
    client.set_registered_model_alias(name, "challenger", "2")


def _workspace(root: Path, name: str) -> Path:
    work = root / "ws"
    write_yaml(work / "params.yaml", {"register": {"model_name": name, "experiment": f"{name}-exp"},
                                      "deploy": {"bucket": BUCKET, "prefix": PREFIX}})
    return work


# --------------------------------------------------------------------------------------------- promote


def _approval_done(server: MlflowServer, name: str) -> bool:
    """champion v2, previous v1, no challenger, and exactly one approval in the audit trail (a FINISHED run)."""
    import mlflow

    client = server.client()
    if _aliases(client, name) != {"champion": "2", "previous": "1"}:
        return False
    exp = client.get_experiment_by_name(f"{name}-audit")
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'") if exp else []
    if len(runs) != 1:
        return False
    mlflow.set_tracking_uri(server.url)
    audit = mlflow.artifacts.load_dict(f"{runs[0].info.artifact_uri}/audit.json")
    return audit["action"] == "approve" and audit["versions"] == {"champion": "2", "previous": "1"}


def _promote_duration(services: Services, template: Path, root: Path) -> float:
    seed_model(services, template, "measure-promote", root / "measure-promote")
    work = _workspace(root / "measure-promote", "measure-promote")
    return timed(MLOPS + APPROVE, work, services.env(), root / "measure-promote.log")


def _promote_trial(services, template, tmp_path, operation: str, seed: int, duration: float, fault) -> Trial:
    """Seed champion v1 + challenger v2, approve with `fault` at a seeded moment, rerun unless it is done."""
    name = f"{operation.replace('/', '-')}-s{seed}"
    seed_model(services, template, name, tmp_path / "seed")
    work, env = _workspace(tmp_path, name), services.env()
    trial = Trial(operation, seed, kill_moment(operation, seed, duration))
    output = fault(trial, work, env)
    client = services.mlflow.client()
    invariants = {**registry_invariants(services.mlflow, name, tmp_path / "check"),
                  "champion is v1 or v2": lambda: _aliases(client, name).get("champion") in ("1", "2")}
    trial.check({**invariants, **output}, "after fault")
    rc = 0
    if not _approval_done(services.mlflow, name):  # what an operator does: approve again
        rc, _ = finish(MLOPS + APPROVE, work, env, tmp_path / "rerun.log")
    trial.check({**invariants, "rerun completed": lambda: rc == 0,
                 "v2 approved once (champion, previous, audit)": lambda: _approval_done(services.mlflow, name),
                 "no run left RUNNING": lambda: no_running_run(services.mlflow, [f"{name}-exp", f"{name}-audit"])},
                "after rerun")
    return trial


@pytest.mark.parametrize("seed", trial_seeds())
def test_promote_killed_at_a_random_moment(seed, services, template, tmp_path, fault_table, tally):
    duration = measured(services.durations, "promote", lambda: _promote_duration(services, template, tmp_path))

    def kill(trial: Trial, work: Path, env: dict) -> dict:
        trial.killed = run_and_kill(MLOPS + APPROVE, work, env, tmp_path / "killed.log", trial.kill_at)
        return {}

    bump(tally, "faults_injected")
    record(fault_table, _promote_trial(services, template, tmp_path, "promote", seed, duration, kill))
    bump(tally, "faults_survived")


# --------------------------------------------------------------------------------------------- MLflow server killed


def _failed_clearly(rc: int, log: Path) -> bool:
    """Exit 0 (the kill came after its last request) or exit 2 with the clear message and no traceback."""
    text = log.read_text(errors="replace")
    return rc == 0 or (rc == 2 and CLEAR_MLFLOW_ERROR in text and "Traceback" not in text)


@pytest.mark.parametrize("seed", trial_seeds())
def test_mlflow_server_killed_during_register(seed, services, template, tmp_path, fault_table, tally):
    duration = measured(services.durations, "register", lambda: _register_duration(services, template, tmp_path))
    operation, name = "register/mlflow-server-killed", f"register-mlflow-killed-s{seed}"
    work, env = _register_workspace(tmp_path, template, name), services.env()
    trial = Trial(operation, seed, kill_moment(operation, seed, duration))
    bump(tally, "faults_injected")
    log = tmp_path / "faulted.log"
    rc, trial.killed = run_with_fault(MLOPS + ["register"], work, env, log, trial.kill_at, services.mlflow.kill)
    services.mlflow.start()  # when it was killed: same port, database and artifacts
    invariants = registry_invariants(services.mlflow, name, tmp_path / "check")
    trial.check({**invariants, "failed clearly (exit 2, no traceback)": lambda: _failed_clearly(rc, log)},
                "after server kill")
    rerun, _ = finish(MLOPS + ["register"], work, env, tmp_path / "rerun.log")
    trial.check({**invariants, "rerun completed": lambda: rerun == 0,
                 "registered once, recorded, run finished": lambda: _registered_once(services.mlflow, name, work),
                 "no run left RUNNING": lambda: no_running_run(services.mlflow, [f"{name}-exp"])}, "after rerun")
    record(fault_table, trial)
    bump(tally, "faults_survived")


@pytest.mark.parametrize("seed", trial_seeds())
def test_mlflow_server_killed_during_promote(seed, services, template, tmp_path, fault_table, tally):
    duration = measured(services.durations, "promote", lambda: _promote_duration(services, template, tmp_path))

    def kill_server(trial: Trial, work: Path, env: dict) -> dict:
        log = tmp_path / "faulted.log"
        rc, trial.killed = run_with_fault(MLOPS + APPROVE, work, env, log, trial.kill_at, services.mlflow.kill)
        services.mlflow.start()
        return {"failed clearly (exit 2, no traceback)": lambda: _failed_clearly(rc, log)}

    bump(tally, "faults_injected")
    record(fault_table, _promote_trial(services, template, tmp_path, "promote/mlflow-server-killed", seed,
                                       duration, kill_server))
    bump(tally, "faults_survived")


# --------------------------------------------------------------------------------------------- deploy


def _release_valid(s3, pointer_key: str) -> str | None:
    """The version of the release `pointer_key` names, if that release is complete and checksum-valid, else None.

    What the model server checks before it serves: manifest present, its sha256 the pointer's, model.tflite with
    that sha256, labels.json with the manifest's.
    """
    pointer = json.loads(s3.get_object(Bucket=BUCKET, Key=pointer_key)["Body"].read())
    release = pointer["release"].rstrip("/") + "/"
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=release + "manifest.json")["Body"].read())
    model = s3.get_object(Bucket=BUCKET, Key=release + "model.tflite")["Body"].read()
    labels = s3.get_object(Bucket=BUCKET, Key=release + "labels.json")["Body"].read()
    ok = (manifest["sha256"] == pointer["sha256"] == hashlib.sha256(model).hexdigest()
          and manifest["files"]["labels.json"]["sha256"] == hashlib.sha256(labels).hexdigest()
          and str(manifest["version"]) == str(pointer["version"]))
    return str(pointer["version"]) if ok else None


def _has(s3, key: str) -> bool:
    return "Contents" in s3.list_objects_v2(Bucket=BUCKET, Prefix=key)


def _keys(name: str) -> tuple[str, str]:
    from pipeline.core.config import DeployConfig
    from pipeline.delivery.layout import pointer_key, previous_key

    cfg = DeployConfig(bucket=BUCKET, prefix=PREFIX)
    return pointer_key(cfg, name), previous_key(cfg, name)


def release_invariants(services: Services, name: str) -> dict[str, Callable[[], object]]:
    pointer, previous = _keys(name)
    return {
        "pointer names a complete, checksum-valid release": lambda: _release_valid(services.s3_client(), pointer),
        "previous.json (if any) names a complete release": lambda: (
            not _has(services.s3_client(), previous) or _release_valid(services.s3_client(), previous)),
    }


def seed_deployed(services: Services, template: Path, name: str, root: Path) -> None:
    """`name` v1 published (pointer v1) and v2 made champion (v1 previous): what `mlops deploy` then publishes."""
    from pipeline.core.config import DeployConfig
    from pipeline.delivery import releases

    seed_model(services, template, name, root)
    client = services.mlflow.client()
    client.set_registered_model_alias(name, "previous", "1")
    client.set_registered_model_alias(name, "champion", "2")
    client.delete_registered_model_alias(name, "challenger")
    releases.publish(DeployConfig(bucket=BUCKET, prefix=PREFIX), name, "1", template / "v1.tflite", CLASSES, {}, {},
                     s3=services.s3_client())


def _deploy_duration(services: Services, template: Path, root: Path) -> float:
    seed_deployed(services, template, "measure-deploy", root / "measure-deploy")
    work = _workspace(root / "measure-deploy", "measure-deploy")
    return timed(MLOPS + ["deploy"], work, services.env(), root / "measure-deploy.log")


@pytest.mark.parametrize("seed", trial_seeds())
def test_deploy_killed_at_a_random_moment(seed, services, template, tmp_path, fault_table, tally):
    duration = measured(services.durations, "deploy", lambda: _deploy_duration(services, template, tmp_path))
    name = f"deploy-s{seed}"
    seed_deployed(services, template, name, tmp_path / "seed")
    work, env = _workspace(tmp_path, name), services.env()
    trial = Trial("deploy", seed, kill_moment("deploy", seed, duration))
    bump(tally, "faults_injected")
    trial.killed = run_and_kill(MLOPS + ["deploy"], work, env, tmp_path / "killed.log", trial.kill_at)
    invariants = release_invariants(services, name)
    trial.check(invariants, "after kill")
    rc, _ = finish(MLOPS + ["deploy"], work, env, tmp_path / "rerun.log")
    s3, (pointer, previous) = services.s3_client(), _keys(name)
    trial.check({**invariants, "rerun completed": lambda: rc == 0,
                 "v2 live, v1 previous": lambda: (
                     _release_valid(s3, pointer) == "2" and _release_valid(s3, previous) == "1")}, "after rerun")
    record(fault_table, trial)
    bump(tally, "faults_survived")


# --------------------------------------------------------------------------------------------- S3 server stopped


def _use_s3(services: Services, monkeypatch) -> None:
    for var, value in services.env().items():
        if var.startswith("AWS_"):
            monkeypatch.setenv(var, value)
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)


def test_s3_server_killed_before_each_request_of_a_publish(services, template, tmp_path, monkeypatch, tally):
    """Count a publish's S3 requests (release files, previous.json, pointer, each PUT then HEAD), then for every k
    publish the next version with the S3 server killed just before request k: clear StageError, the live pointer
    still a complete release (the old one; the new one once the pointer PUT went through), a retry completes."""
    from pipeline.core.config import DeployConfig
    from pipeline.core.errors import StageError
    from pipeline.delivery import releases, s3 as s3io

    cfg, name = DeployConfig(bucket=BUCKET, prefix=PREFIX), "publish-steps"
    pointer, previous = _keys(name)
    _use_s3(services, monkeypatch)
    tflites = [template / "v1.tflite", template / "v2.tflite"]
    releases.publish(cfg, name, "1", tflites[0], CLASSES, {}, {})
    sent: list[str] = []
    client = s3io.s3_client(cfg)
    client.meta.events.register("before-send.s3", lambda request, **_: sent.append(f"{request.method} {request.url}"))
    releases.publish(cfg, name, "2", tflites[1], CLASSES, {}, {}, s3=client)
    steps = list(sent)
    assert any(previous in s for s in steps) and steps[-2].startswith("PUT") and pointer in steps[-2], steps
    for k, step in enumerate(steps):
        bump(tally, "faults_injected")
        old, new = str(k + 2), str(k + 3)
        client, count = s3io.s3_client(cfg), [0]

        def kill_before(request, k=k, count=count, **_):
            count[0] += 1
            if count[0] == k + 1:
                services.s3[3]()  # the server is gone before request k is sent

        client.meta.events.register("before-send.s3", kill_before)
        with pytest.raises(StageError, match="cannot reach the endpoint") as err:
            releases.publish(cfg, name, new, tflites[k % 2], CLASSES, {}, {}, s3=client)
        assert "Traceback" not in str(err.value) and f"publish of {name} v{new}" in str(err.value)
        services.restart_s3()
        _use_s3(services, monkeypatch)
        s3 = services.s3_client()
        live = _release_valid(s3, pointer)
        pointer_sent = k > steps.index(steps[-2])
        assert live == (new if pointer_sent else old), (k, step, live)
        assert _release_valid(s3, previous) in (old, str(k + 1)), (k, step)  # old once previous.json was written
        releases.publish(cfg, name, new, tflites[k % 2], CLASSES, {}, {})  # the retry
        assert _release_valid(s3, pointer) == new and _release_valid(s3, previous) == old, (k, step)
        bump(tally, "faults_survived")

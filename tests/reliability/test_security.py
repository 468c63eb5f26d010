"""Security: credentials only from the environment, never in outputs; the served model is the one the manifest
names; promotion decisions are attributed and the audit trail is append-only; no code runs from a dataset pickle.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import shutil
import subprocess

import pytest

from pipeline.core import io
from tests.data.test_cifar_reader import blobs as cifar_blobs
from tests.data.test_cifar_reader import make_dir as cifar_dir
from tests.helpers_s3 import ROOT, start_s3_server
from tests.reliability.common import cli, contains, make_register_workspace, write_yaml

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    endpoint, key, secret, stop = start_s3_server(tmp_path_factory.mktemp("s3"))
    yield {"endpoint": endpoint, "key": key, "secret": secret}
    stop()


@pytest.fixture
def aws_env(s3, monkeypatch):
    """The S3 credentials in the environment, as a user exports them (the only place they may come from)."""
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    for var, value in (("AWS_ACCESS_KEY_ID", s3["key"]), ("AWS_SECRET_ACCESS_KEY", s3["secret"]),
                       ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_CONFIG_FILE", "/nonexistent/aws-config"),
                       ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials"),
                       ("AWS_EC2_METADATA_DISABLED", "true")):
        monkeypatch.setenv(var, value)
    return s3


# --------------------------------------------------------------------------------------------- secrets


@pytest.mark.integration  # S3 server and/or MLflow store
def test_the_secret_never_reaches_output_logs_runs_or_artifacts(template, aws_env, tmp_path, monkeypatch, capfd,
                                                                caplog):
    import mlflow

    from pipeline.delivery import s3 as s3io
    from pipeline.core.config import load_params

    secret = aws_env["secret"]
    name = "security-model"
    work = make_register_workspace(tmp_path / "ws", template, name, params={
        "deploy": {"bucket": "security", "prefix": "models", "endpoint_url": aws_env["endpoint"]}})
    monkeypatch.chdir(work)
    uri = f"sqlite:///{(work / 'mlflow' / 'mlflow.db').resolve()}"  # the embedded store (artifacts in mlflow/)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    caplog.set_level(logging.DEBUG)  # everything any library logs, botocore's request logging included

    outputs = []
    for args in (["register"], ["commit-run"], ["promote", "--approve", "--by", "security-officer", "--reason", "drill", "--publish"],
                 ["deploy"], ["status"]):
        code, text = cli(*args)
        assert code == 0, text
        outputs.append(text)
    # an error path too: rejected credentials (their message names the variables, never the value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "WRONG" + secret[::-1])
    code, text = cli("deploy")
    assert code == 2 and "SignatureDoesNotMatch" in text, text
    outputs.append(text)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)

    leaks = []
    captured = capfd.readouterr()
    for where, text in (("cli output", "\n".join(outputs)), ("logs", caplog.text), ("stdout", captured.out),
                        ("stderr", captured.err)):
        if contains(text, secret) or contains(text, secret[::-1]):
            leaks.append(where)
    assert "botocore" in caplog.text, "the scan must have seen the S3 client's own logging"

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) >= 2  # the register run and the audit run
    for run in runs:
        fields = {**run.data.params, **run.data.tags, **{k: "" for k in run.data.metrics}}
        leaks += [f"run {run.info.run_id} {k}" for k, v in fields.items() if secret in f"{k}={v}"]
    for mv in client.search_model_versions(f"name='{name}'"):
        leaks += [f"version {mv.version} tag {k}" for k, v in mv.tags.items() if secret in f"{k}={v}"]

    files = [p for p in work.rglob("*") if p.is_file()]  # reports/, metrics/, the MLflow db and every artifact
    assert (work / "reports" / "registration.json").is_file() and any(p.name == "MLmodel" for p in files)
    leaks += [str(p) for p in files if contains(p.read_bytes(), secret)]

    cfg = load_params(work / "params.yaml").deploy
    s3 = s3io.s3_client(cfg)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=cfg.bucket)["Contents"]]
    assert f"models/{name}/releases/v1/manifest.json" in keys and len(keys) >= 4
    leaks += [f"s3://{cfg.bucket}/{k}" for k in keys
              if contains(s3.get_object(Bucket=cfg.bucket, Key=k)["Body"].read(), secret)]
    assert not leaks, f"the secret leaked into: {leaks}"


def test_params_yaml_refuses_credentials_without_echoing_them(tmp_path):
    secret = "fake-secret-for-a-test-0123456789abcdef"
    for text, field in ((f"deploy:\n  aws_secret_access_key: {secret}\n", "deploy.aws_secret_access_key"),
                        (f"aws:\n  secret_access_key: {secret}\n", "aws")):
        (tmp_path / "params.yaml").write_text(text)
        code, output = cli("deploy", "--params", tmp_path / "params.yaml")
        assert code == 2 and field in output and "unknown parameter" in output, output
        assert secret not in output, "a misplaced credential must not be printed back"


def test_git_index_holds_no_credentials():
    if shutil.which("git") is None or subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=ROOT,
                                                     capture_output=True).returncode != 0:
        pytest.skip("not a git work tree")
    patterns = [("-E", r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),                       # AWS access key ids
                ("-E", r"-----BEGIN ([A-Z]+ )?PRIVATE KEY-----"),               # private keys
                ("-Ei", r"aws_secret_access_key['\"]?\s*[:=]\s*['\"]?[A-Za-z0-9/+]{40}")]  # inline secrets
    for flag, pattern in patterns:
        found = subprocess.run(["git", "grep", "--cached", "-I", "-n", flag, "-e", pattern], cwd=ROOT,
                               capture_output=True, text=True)
        assert found.returncode == 1, f"tracked files match {pattern!r}:\n{found.stdout[:2000]}{found.stderr}"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    risky = [f for f in tracked if re.search(r"(^|/)(\.env|[^/]*\.local\.env|credentials|id_rsa|[^/]*\.pem)$", f)]
    assert not risky, f"credential files are tracked: {risky}"
    for path in (".env", "prod.local.env", "mlflow/mlflow.db", ".stack/s3.env"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0, f"{path} is not ignored"


# --------------------------------------------------------------------------------------------- the served model


@pytest.mark.integration  # S3 server and/or MLflow store
def test_a_tampered_release_is_refused_before_it_is_served(template, aws_env, tmp_path):
    from pipeline.delivery import releases as deploy, s3 as s3io
    from pipeline.core.config import DeployConfig
    from pipeline.core.errors import StageError
    from pipeline.delivery.api import create_app
    from pipeline.delivery.server import S3Source

    cfg = DeployConfig(bucket="security", prefix="tamper", endpoint_url=aws_env["endpoint"])
    name = "tampered-model"
    deploy.publish(cfg, name, "1", template / "v1.tflite", ["cat", "dog", "bird"], {}, {})
    create_app(S3Source(cfg, name), cfg, start_reloader=False)  # the genuine release loads

    s3 = s3io.s3_client(cfg)  # an attacker with write access swaps the model bytes in the release
    s3.put_object(Bucket=cfg.bucket, Key=f"tamper/{name}/releases/v1/model.tflite",
                  Body=(template / "v2.tflite").read_bytes())
    with pytest.raises(StageError, match="failed verification.*Refusing to serve it"):
        create_app(S3Source(cfg, name), cfg, start_reloader=False)

    params = write_yaml(tmp_path / "params.yaml", {"register": {"model_name": name},
                                                   "deploy": cfg.model_dump(mode="json")})
    code, output = cli("serve", "--params", params, "--source", "s3")
    assert code == 2 and "failed verification" in output and "sha256" in output, output

    manifest_key = f"tamper/{name}/releases/v1/manifest.json"  # a forged manifest does not match the pointer either
    forged = s3.get_object(Bucket=cfg.bucket, Key=manifest_key)["Body"].read().replace(
        io.sha256_file(template / "v1.tflite").encode(), io.sha256_file(template / "v2.tflite").encode())
    s3.put_object(Bucket=cfg.bucket, Key=manifest_key, Body=forged)
    with pytest.raises(StageError, match="does not match the pointer"):
        create_app(S3Source(cfg, name), cfg, start_reloader=False)


# --------------------------------------------------------------------------------------------- promotion audit


def _audit_tags(client, name: str) -> dict[str, str]:
    return {f"v{mv.version}:{k}": v for mv in client.search_model_versions(f"name='{name}'")
            for k, v in mv.tags.items() if k.startswith("audit.")}


@pytest.mark.integration  # S3 server and/or MLflow store
def test_promotion_records_the_approver_and_the_audit_trail_is_append_only(mlflow_store, tmp_path):
    from pipeline.registry import promotion as promote
    from pipeline.registry import store as registry
    from tests.unit.registry.test_promotion import NAME, _version

    write_yaml(tmp_path / "params.yaml", {"register": {"model_name": NAME}})
    client = registry.client()
    _version(0.90, True)
    code, output = cli("promote", "--approve", "--by", "  ", "--reason", "anonymous")
    assert code == 2 and "approver's name" in output and promote.aliases(NAME)["champion"] is None, output

    decisions = [(None, ("promote", "--approve", "--by", "alice", "--reason", "first")),  # challenger v1 (above)
                 (0.93, ("promote", "--approve", "--by", "bob", "--reason", "better")),
                 (0.80, ("promote", "--reject", "--by", "carol", "--reason", "worse")),
                 (None, ("rollback", "--by", "dave", "--reason", "incident 42"))]
    tags, records = {}, []
    for accuracy, args in decisions:
        if accuracy is not None:
            _version(accuracy, True)  # a new blessed challenger
        code, output = cli(*args)
        assert code == 0, output
        now_tags, now_records = _audit_tags(client, NAME), promote.history(NAME)
        assert {k: now_tags.get(k) for k in tags} == tags, "an earlier audit tag was rewritten"
        assert now_records[:len(records)] == records, "an earlier audit record was rewritten"
        assert len(now_records) == len(records) + 1 and len(now_tags) > len(tags)
        tags, records = now_tags, now_records
    assert [(r["action"], r["by"], r["reason"]) for r in records] == [
        ("approve", "alice", "first"), ("approve", "bob", "better"), ("reject", "carol", "worse"),
        ("rollback", "dave", "incident 42")]
    assert all(r["at"] for r in records)
    for version in {k.split(":")[0] for k in tags}:  # per version: audit.1, audit.2, ... with no gaps
        indices = sorted({int(k.split(".")[1]) for k in tags if k.startswith(f"{version}:")})
        assert indices == list(range(1, len(indices) + 1)), (version, indices)
    assert tags["v1:audit.1.by"] == "alice" and tags["v2:audit.1.by"] == "bob"


# --------------------------------------------------------------------------------------------- dataset pickles


def test_cifar_reader_refuses_a_malicious_pickle(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    root = cifar_dir(tmp_path / "cifar", {**cifar_blobs(), "data_batch_1": pickle.dumps(Exploit())})
    params = write_yaml(tmp_path / "params.yaml", {"ingest": {"dataset": "cifar10", "source": str(root)}})
    code, output = cli("ingest", "--params", params, "--out", tmp_path / "ingested")
    assert code == 2 and "data_batch_1" in output and re.search(r"refusing to load (posix|os)\.system", output), output
    assert not marker.exists(), "the pickle's payload ran"
    assert not (tmp_path / "ingested").exists()

"""Deploy + serve against a real S3-compatible server (nanio, SigV4 enforced) and a real tiny .tflite.

Each test uses its own model name, so tests share the module's server without sharing state.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from pipeline.delivery import releases as deploy, s3 as s3io

from pipeline.core import io
from pipeline.core.config import DeployConfig
from pipeline.core.errors import StageError
from tests.helpers_s3 import ROOT, build_tiny_tflite, free_port, sample_images, start_s3_server

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated")]

CLASSES = ["cat", "dog", "bird"]
METRICS = {"accuracy": 0.93}
LINEAGE = {"git_commit": "abc123", "data.manifest_checksum": "feed"}


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """A nanio server for this module, its credentials in the environment (as a user would export them)."""
    endpoint, access_key, secret, stop = start_s3_server(tmp_path_factory.mktemp("s3"))
    with pytest.MonkeyPatch.context() as mp:
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(var, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", access_key)
        mp.setenv("AWS_SECRET_ACCESS_KEY", secret)
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield {"endpoint": endpoint, "access_key": access_key, "secret": secret}
    stop()


@pytest.fixture(scope="module")
def tflites(tmp_path_factory):
    """Two different real models with the same interface (8×8×1 → 3 classes)."""
    root = tmp_path_factory.mktemp("tflite")
    return build_tiny_tflite(root / "v1.tflite", seed=1), build_tiny_tflite(root / "v2.tflite", seed=2)


@pytest.fixture
def cfg(s3_server, request):
    # endpoint comes from AWS_ENDPOINT_URL, as in production
    return DeployConfig(bucket="models-test", prefix="ci/models")


@pytest.fixture
def name(request):
    return "m-" + request.node.name.replace("_", "-")[:40]


def _raw(cfg):
    return s3io.s3_client(cfg)


def _get_json(cfg, key):
    return json.loads(_raw(cfg).get_object(Bucket=cfg.bucket, Key=key)["Body"].read())


def _keys(cfg, prefix):
    resp = _raw(cfg).list_objects_v2(Bucket=cfg.bucket, Prefix=prefix)
    return sorted(obj["Key"] for obj in resp.get("Contents", []))


def _publish(cfg, name, version, path):
    return deploy.publish(cfg, name, version, path, CLASSES, METRICS, LINEAGE)


# --------------------------------------------------------------------------------------------- publish


def test_publish_uploads_release_and_points_at_it(cfg, name, tflites):
    result = _publish(cfg, name, "1", tflites[0])
    root = f"ci/models/{name}"
    assert _keys(cfg, root) == [f"{root}/champion/pointer.json", f"{root}/releases/v1/labels.json",
                                f"{root}/releases/v1/manifest.json", f"{root}/releases/v1/model.tflite"]
    pointer = _get_json(cfg, f"{root}/champion/pointer.json")
    assert pointer["release"] == f"{root}/releases/v1/" and pointer["version"] == "1"
    manifest = _get_json(cfg, f"{root}/releases/v1/manifest.json")
    assert manifest["sha256"] == io.sha256_file(tflites[0]) == pointer["sha256"]
    assert manifest["bytes"] == tflites[0].stat().st_size
    assert manifest["input_shape"] == [8, 8, 1] and manifest["input_dtype"] == "float32"
    assert manifest["class_names"] == CLASSES and manifest["metrics"] == METRICS and manifest["lineage"] == LINEAGE
    assert manifest["model_name"] == name and manifest["version"] == "1"
    assert datetime.fromisoformat(manifest["published_at"]).utcoffset().total_seconds() == 0
    assert _get_json(cfg, f"{root}/releases/v1/labels.json") == CLASSES
    body = _raw(cfg).get_object(Bucket=cfg.bucket, Key=f"{root}/releases/v1/model.tflite")["Body"].read()
    assert body == tflites[0].read_bytes()
    assert result["release"] == f"s3://models-test/{root}/releases/v1/"
    assert result["pointer"] == f"s3://models-test/{root}/champion/pointer.json"
    assert result["manifest"]["sha256"] == manifest["sha256"]


def test_second_publish_flips_pointer_keeps_previous_and_is_idempotent(cfg, name, tflites):
    root = f"ci/models/{name}"
    _publish(cfg, name, "1", tflites[0])
    first = _get_json(cfg, f"{root}/champion/pointer.json")
    _publish(cfg, name, "v2", tflites[1])  # "v2" and "2" name the same version
    pointer = _get_json(cfg, f"{root}/champion/pointer.json")
    assert pointer["version"] == "2" and pointer["release"] == f"{root}/releases/v2/"
    assert pointer["sha256"] == io.sha256_file(tflites[1])
    assert _get_json(cfg, f"{root}/champion/previous.json") == first

    again = _publish(cfg, name, "2", tflites[1])  # same version, same bytes: nothing changes
    assert again["version"] == "2"
    assert _get_json(cfg, f"{root}/champion/pointer.json") == pointer
    assert _get_json(cfg, f"{root}/champion/previous.json") == first

    with pytest.raises(StageError, match="immutable"):  # same version, different bytes: refused
        _publish(cfg, name, "2", tflites[0])
    assert _get_json(cfg, f"{root}/champion/pointer.json") == pointer

    _publish(cfg, name, "1", tflites[0])  # rollback by re-publishing v1
    assert _get_json(cfg, f"{root}/champion/pointer.json")["version"] == "1"
    assert _get_json(cfg, f"{root}/champion/previous.json") == pointer


def test_failed_upload_leaves_the_previous_pointer(cfg, name, tflites, monkeypatch, tmp_path):
    from botocore.exceptions import EndpointConnectionError

    root = f"ci/models/{name}"
    _publish(cfg, name, "1", tflites[0])
    before = _get_json(cfg, f"{root}/champion/pointer.json")
    real_client = deploy.s3_client

    def flaky_client(c):
        client = real_client(c)

        def drop_labels(request, **_):  # the network dies while uploading labels.json
            if request.url.endswith("/labels.json"):
                raise EndpointConnectionError(endpoint_url=request.url)

        client.meta.events.register("before-send.s3.PutObject", drop_labels)
        return client

    monkeypatch.setattr(deploy, "s3_client", flaky_client)
    with pytest.raises(StageError, match="cannot reach the endpoint") as err:
        _publish(cfg, name, "2", tflites[1])
    assert cfg.bucket in str(err.value)
    monkeypatch.setattr(deploy, "s3_client", real_client)
    assert _get_json(cfg, f"{root}/champion/pointer.json") == before
    assert f"{root}/releases/v2/manifest.json" not in _keys(cfg, root)  # the partial release never completed
    path, manifest = deploy.fetch_current(cfg, name, tmp_path)
    assert manifest["version"] == "1" and io.sha256_file(path) == before["sha256"]


def test_wrong_secret_is_a_clear_error_without_the_secret(cfg, name, tflites, monkeypatch, s3_server, tmp_path):
    root = f"ci/models/{name}"
    _publish(cfg, name, "1", tflites[0])
    wrong = "WRONG-" + s3_server["secret"][::-1]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    with pytest.raises(StageError) as err:
        _publish(cfg, name, "2", tflites[1])
    message = str(err.value)
    assert "SignatureDoesNotMatch" in message and "credentials" in message
    assert s3_server["endpoint"] in message and cfg.bucket in message
    assert wrong not in message and s3_server["secret"] not in message
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server["secret"])
    assert _get_json(cfg, f"{root}/champion/pointer.json")["version"] == "1"

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "NOSUCHKEY")
    with pytest.raises(StageError, match="InvalidAccessKeyId"):
        deploy.fetch_current(cfg, name, tmp_path)


def test_missing_credentials_and_unreachable_endpoint(cfg, monkeypatch, s3_server):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StageError, match="no credentials found") as err:
        s3io.s3_client(cfg)
    assert s3_server["endpoint"] in str(err.value) and "models-test" in str(err.value)

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server["access_key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server["secret"])
    dead = DeployConfig(bucket="models-test", endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StageError, match="cannot reach the endpoint") as err:
        deploy.read_pointer(dead, "anything")
    assert dead.endpoint_url in str(err.value) and s3_server["secret"] not in str(err.value)


def test_fetch_current_verifies_sha256(cfg, name, tflites, tmp_path):
    root = f"ci/models/{name}"
    with pytest.raises(StageError, match="nothing published"):
        deploy.fetch_current(cfg, name, tmp_path / "none")
    _publish(cfg, name, "1", tflites[0])
    path, manifest = deploy.fetch_current(cfg, name, tmp_path / "ok")
    assert path.read_bytes() == tflites[0].read_bytes() and manifest["class_names"] == CLASSES
    assert json.loads((tmp_path / "ok" / "labels.json").read_text()) == CLASSES

    _raw(cfg).put_object(Bucket=cfg.bucket, Key=f"{root}/releases/v1/model.tflite", Body=tflites[1].read_bytes())
    with pytest.raises(StageError, match="failed verification"):
        deploy.fetch_current(cfg, name, tmp_path / "ok")
    assert not (tmp_path / "ok" / "model.tflite").exists()  # the bad (and the stale) file is gone
    assert not list((tmp_path / "ok").glob(".model*"))

    _publish(cfg, name, "1", tflites[0])  # re-publishing the same version repairs the release
    path, _ = deploy.fetch_current(cfg, name, tmp_path / "ok")
    assert io.sha256_file(path) == manifest["sha256"]


def test_parse_s3_url():
    assert s3io.parse_s3_url("s3://bucket/key/prefix") == ("bucket", "key/prefix")
    assert s3io.parse_s3_url("s3://my.bucket-1") == ("my.bucket-1", "")
    for bad in ("http://bucket/key", "bucket/key", "s3://", "s3:///key", "s3://Bad_Bucket/k", "s3://ab/k",
                "s3://bucket/a//b"):
        with pytest.raises(StageError, match="S3 URL|bucket"):
            s3io.parse_s3_url(bad)


# --------------------------------------------------------------------------------------------- serve


@pytest.fixture
def client(cfg, name, tflites):
    from fastapi.testclient import TestClient

    from pipeline.delivery.api import create_app
    from pipeline.delivery.server import S3Source

    _publish(cfg, name, "1", tflites[0])
    small = cfg.model_copy(update={"max_body_bytes": 4096})
    app = create_app(S3Source(small, name), small, start_reloader=False)
    return TestClient(app)


def test_health_and_predict(client, name, tflites):
    from pipeline.ml.tflite import TFLiteModel

    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model_name"] == name
    assert health["version"] == "1" and health["input_shape"] == [8, 8, 1]

    x = sample_images(3)
    resp = client.post("/predict", json={"instances": x.tolist()})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    expected = TFLiteModel(tflites[0]).predict(x).argmax(axis=1).tolist()
    assert body["version"] == "1" and body["predictions"] == expected
    assert body["labels"] == [CLASSES[i] for i in expected]
    assert np.allclose(np.sum(body["probabilities"], axis=1), 1.0, atol=1e-4)

    flat = client.post("/predict", json={"instances": x.reshape(3, -1).tolist()})
    assert flat.status_code == 200 and flat.json()["predictions"] == expected


@pytest.mark.parametrize("body, status, fragment", [
    ({"instances": np.zeros((1, 4, 4, 1)).tolist()}, 400, "[8, 8, 1]"),
    ({"instances": [[1, 2, 3]]}, 400, "[8, 8, 1]"),
    ({"instances": []}, 400, "non-empty"),
    ({"instances": [[["a"] * 1] * 8] * 1}, 400, "numbers"),
    ({"instances": np.full((1, 8, 8, 1), 300.0).tolist()}, 400, "0–255"),
    ({"instances": np.full((1, 8, 8, 1), -1.0).tolist()}, 400, "0–255"),
    ({"images": []}, 422, "instances"),
    ([1, 2, 3], 400, "JSON object"),
])
def test_predict_rejects_bad_input(client, body, status, fragment):
    resp = client.post("/predict", json=body)
    assert resp.status_code == status, resp.text
    assert fragment in resp.json()["error"]


def test_predict_rejects_non_json_nan_and_oversize(client):
    resp = client.post("/predict", content=b"not json{", headers={"content-type": "application/json"})
    assert resp.status_code == 400 and "not valid JSON" in resp.json()["error"]

    nan = json.dumps({"instances": np.zeros((1, 8, 8, 1)).tolist()}).replace("0.0", "NaN", 1)
    resp = client.post("/predict", content=nan, headers={"content-type": "application/json"})
    assert resp.status_code == 400 and "NaN" in resp.json()["error"]

    big = json.dumps({"instances": np.full((10, 8, 8, 1), 100.125).tolist()}).encode()
    assert len(big) > 4096
    resp = client.post("/predict", content=big, headers={"content-type": "application/json"})
    assert resp.status_code == 413 and "4096" in resp.json()["error"]

    def chunks():  # no Content-Length (chunked): the limit applies to the bytes actually read
        for i in range(0, len(big), 1000):
            yield big[i:i + 1000]

    resp = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert resp.status_code == 413


def test_reload_swaps_to_new_version_and_refuses_a_tampered_one(client, cfg, name, tflites):
    from pipeline.ml.tflite import TFLiteModel

    assert client.post("/reload").json() == {"reloaded": False, "version": "1"}
    x = sample_images(4, seed=7)
    errors: list[str] = []
    stop, after_reload = threading.Event(), threading.Event()
    served_v2 = threading.Semaphore(0)

    def hammer():  # requests in flight during the swap must all succeed
        while not stop.is_set():
            resp = client.post("/predict", json={"instances": x.tolist()})
            if resp.status_code != 200:
                errors.append(resp.text)
            elif after_reload.is_set() and resp.json()["version"] == "2":
                served_v2.release()

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        _publish(cfg, name, "2", tflites[1])
        result = client.post("/reload").json()
        after_reload.set()
        for _ in threads:  # the hammers keep going until they have been answered by the new version
            assert served_v2.acquire(timeout=30), "no request was answered by v2 after the reload"
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not errors
    assert result == {"reloaded": True, "version": "2", "previous_version": "1"}
    assert client.get("/health").json()["version"] == "2"
    body = client.post("/predict", json={"instances": x.tolist()}).json()
    assert body["version"] == "2"
    assert body["predictions"] == TFLiteModel(tflites[1]).predict(x).argmax(axis=1).tolist()

    # a new release whose model.tflite was tampered with is never swapped in
    _publish(cfg, name, "3", tflites[0])
    _raw(cfg).put_object(Bucket=cfg.bucket, Key=f"ci/models/{name}/releases/v3/model.tflite", Body=b"garbage")
    resp = client.post("/reload")
    assert resp.status_code == 503 and "failed verification" in resp.json()["error"]
    health = client.get("/health").json()
    assert health["version"] == "2" and "failed verification" in health["last_reload_error"]


def test_background_reloader_follows_the_pointer(cfg, name, tflites):
    from fastapi.testclient import TestClient

    from pipeline.delivery.api import create_app
    from pipeline.delivery.server import S3Source

    _publish(cfg, name, "1", tflites[0])
    fast = cfg.model_copy(update={"reload_seconds": 0.2})
    with TestClient(create_app(S3Source(fast, name), fast)) as client:  # lifespan starts the poller
        assert client.get("/health").json()["version"] == "1"
        _publish(cfg, name, "2", tflites[1])
        deadline = time.monotonic() + 20
        while client.get("/health").json()["version"] != "2" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.get("/health").json()["version"] == "2"


def test_mlops_serve_process(cfg, name, tflites, tmp_path, s3_server):
    """The real CLI: `mlops serve --source s3` under uvicorn, queried over HTTP, then terminated."""
    _publish(cfg, name, "1", tflites[0])
    params = tmp_path / "params.yaml"
    params.write_text(f"register:\n  model_name: {name}\ndeploy:\n  bucket: {cfg.bucket}\n"
                      f"  prefix: {cfg.prefix}\n  endpoint_url: {s3_server['endpoint']}\n")
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "serve", "--params", str(params),
                                 "--source", "s3", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        health = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                    health = json.loads(resp.read())
                break
            except OSError:
                time.sleep(0.3)
        assert health is not None, log.read_text()[-3000:]
        assert health["version"] == "1" and health["model_name"] == name

        data = json.dumps({"instances": sample_images(2).tolist()}).encode()
        req = urllib.request.Request(url + "/predict", data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = json.loads(resp.read())
        assert len(body["predictions"]) == 2 and set(body["labels"]) <= set(CLASSES)

        bad = urllib.request.Request(url + "/predict", data=b"{", headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(bad, timeout=10)
        assert err.value.code == 400
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert s3_server["secret"] not in log.read_text()


def test_mlops_serve_without_deployment_fails_clearly(cfg, name, tmp_path, s3_server):
    from typer.testing import CliRunner

    from pipeline.cli import app

    params = tmp_path / "params.yaml"
    params.write_text(f"register:\n  model_name: {name}\ndeploy:\n  bucket: {cfg.bucket}\n  prefix: {cfg.prefix}\n")
    result = CliRunner().invoke(app, ["serve", "--params", str(params), "--port", str(free_port())])
    assert result.exit_code == 2
    assert "nothing published" in result.output


# --------------------------------------------------------------------------------------------- registry → S3


def _register(name: str, tflite: Path, tmp: Path) -> str:
    import mlflow

    from pipeline.registry import store as registry
    from pipeline.registry.pyfunc import TFLiteClassifier

    registry.client()
    labels = tmp / "labels.json"
    labels.write_text(json.dumps(CLASSES))
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="classifier", python_model=TFLiteClassifier(),
                                       artifacts={"tflite": str(tflite), "labels": str(labels)},
                                       pip_requirements=["numpy"])
    version = mlflow.register_model(info.model_uri, name,
                                    tags={"eval.accuracy": "0.91", "eval.blessed": "true", "git_commit": "c0ffee"})
    return str(version.version)


def test_deploy_publishes_the_champion_once(mlflow_store, cfg, name, tflites, tmp_path):
    from typer.testing import CliRunner

    from pipeline.registry import store as registry
    from pipeline.cli import app
    from pipeline.core.config import Params

    params_file = tmp_path / "params.yaml"
    params_file.write_text(f"register:\n  model_name: {name}\ndeploy:\n  bucket: {cfg.bucket}\n"
                           f"  prefix: {cfg.prefix}\n")
    result = CliRunner().invoke(app, ["deploy", "--params", str(params_file)])
    assert result.exit_code == 2 and "no champion yet; approve a challenger first" in result.output

    version = _register(name, tflites[0], tmp_path)
    registry.client().set_registered_model_alias(name, "champion", version)
    result = CliRunner().invoke(app, ["deploy", "--params", str(params_file)])
    assert result.exit_code == 0, result.output
    assert f"v{version}" in result.output and f"s3://{cfg.bucket}/{cfg.prefix}/{name}/releases/v{version}/" in result.output

    manifest = _get_json(cfg, f"{cfg.prefix}/{name}/releases/v{version}/manifest.json")
    assert manifest["sha256"] == io.sha256_file(tflites[0]) and manifest["class_names"] == CLASSES
    assert manifest["metrics"]["accuracy"] == pytest.approx(0.91) and manifest["lineage"]["git_commit"] == "c0ffee"

    params = Params.model_validate({"register": {"model_name": name},
                                    "deploy": {"bucket": cfg.bucket, "prefix": cfg.prefix}})
    assert deploy.publish_champion(params)["skipped"] is True

    from pipeline.delivery.server import RegistrySource

    model, served = RegistrySource(name).load()
    assert served["version"] == version and served["sha256"] == manifest["sha256"]
    assert served["class_names"] == CLASSES and model.input_shape == (8, 8, 1)

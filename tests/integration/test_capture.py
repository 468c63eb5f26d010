"""The real `mlops serve` process captures what it answers into the S3 inbox (real nanio, SigV4 enforced).

Flushed by time while it runs, flushed at a clean shutdown, nothing at all with `--no-capture`. The captured
.npz holds the request ids the client got back, the predictions it got and the images it sent.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.config import DeployConfig
from pipeline.delivery import releases, s3 as s3io
from tests.helpers_s3 import ROOT, build_tiny_tflite, free_port, start_s3_server

pytestmark = pytest.mark.integration

NAME = "capture-it"
INBOX = "inbox-test"
CLASSES = ["cat", "dog", "bird"]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """nanio with its credentials in the environment, a published tiny model and an empty inbox bucket."""
    endpoint, access_key, secret, stop = start_s3_server(tmp_path_factory.mktemp("s3"))
    with pytest.MonkeyPatch.context() as mp:
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(var, raising=False)
        env = {
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": "/nonexistent/aws-config",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        for key, value in env.items():
            mp.setenv(key, value)
        cfg = DeployConfig(bucket="models-test", prefix="ci/models")
        tflite = build_tiny_tflite(tmp_path_factory.mktemp("tflite") / "v1.tflite", seed=1)
        releases.publish(cfg, NAME, "1", tflite, CLASSES, {"accuracy": 0.9}, {})
        s3io.s3_client(cfg).create_bucket(Bucket=INBOX)
        yield cfg
    stop()


def _params(tmp_path: Path, prefix: str, **capture) -> Path:
    settings = {"enabled": True, "sample_rate": 1.0, "batch_images": 1000, "flush_seconds": 3600, **capture}
    lines = "".join(f"  {key}: {json.dumps(value)}\n" for key, value in settings.items())
    path = tmp_path / "params.yaml"
    path.write_text(
        f"register:\n  model_name: {NAME}\ndeploy:\n  bucket: models-test\n  prefix: ci/models\n"
        f"paths:\n  incoming: {tmp_path / 'incoming'}\n"
        f"monitor:\n  inbox: s3://{INBOX}/{prefix}\ncapture:\n{lines}"
    )
    return path


def _start(params: Path, log: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """`mlops serve` on a free port, once /health answers; (process, base URL)."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipeline.cli",
                "serve",
                "--params",
                str(params),
                "--source",
                "s3",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                *extra,
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(url + "/health", timeout=2).close()
            return proc, url
        except OSError:
            time.sleep(0.3)
    _stop(proc)
    raise AssertionError(f"the server did not come up:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> int:
    """SIGTERM (a clean uvicorn shutdown, lifespan included), SIGKILL only if it hangs; the exit status."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def _predict(url: str, images: np.ndarray, rid: str | None = None) -> tuple[str, dict]:
    buf = io.BytesIO()
    np.save(buf, images)
    headers = {"Content-Type": "application/x-npy", **({"X-Request-ID": rid} if rid else {})}
    req = urllib.request.Request(url + "/predict", data=buf.getvalue(), headers=headers)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.headers["X-Request-ID"], json.loads(resp.read())


def _captured(cfg: DeployConfig, prefix: str) -> list[dict[str, np.ndarray]]:
    s3 = s3io.s3_client(cfg)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=INBOX, Prefix=f"{prefix}/captured/").get("Contents", [])]
    assert all(k.rsplit("/", 1)[-1].startswith("capture-") and k.endswith(".npz") for k in keys), keys
    out = []
    for key in sorted(keys):
        with np.load(io.BytesIO(s3io.get_bytes(s3, INBOX, key)), allow_pickle=False) as npz:
            out.append({name: npz[name] for name in npz.files})
    return out


def _wait_for_capture(cfg: DeployConfig, prefix: str, images: int, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _captured(cfg, prefix)
        if sum(len(f["x"]) for f in found) >= images:
            return found
        time.sleep(0.2)
    return _captured(cfg, prefix)


def _merged(found: list[dict]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([f[key] for f in found]) for key in found[0]} if found else {}


def test_served_answers_are_captured_in_the_inbox(deployed, tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    proc, url = _start(_params(tmp_path, "live", flush_seconds=0.5), tmp_path / "serve.log")
    try:
        rid_one, one = _predict(url, images[:1], rid="ticket-42")
        rid_two, two = _predict(url, images[1:])
        assert rid_one == one["request_id"] == "ticket-42"
        assert rid_two == two["request_id"] and len(rid_two) == 32
        got = _merged(_wait_for_capture(deployed, "live", 3))  # flushed by time, while the server runs
        with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
    finally:
        _stop(proc)
    assert sorted(got["request_id"].tolist()) == sorted(["ticket-42", f"{rid_two}-0", f"{rid_two}-1"])
    order = np.argsort(got["request_id"])
    expected = dict(zip(["ticket-42", f"{rid_two}-0", f"{rid_two}-1"], range(3), strict=True))
    for i in order:
        k = expected[str(got["request_id"][i])]
        np.testing.assert_array_equal(got["x"][i], images[k])
        assert got["pred"][i] == (one["predictions"] + two["predictions"])[k]
    assert got["x"].dtype == np.uint8 and got["probs"].shape == (3, 3) and set(got["version"]) == {"1"}
    assert "mlops_serve_capture_images_total 3.0" in metrics
    assert deployed.bucket != INBOX and not (tmp_path / "incoming").exists()


def test_clean_shutdown_flushes_the_buffer(deployed, tmp_path):
    log = tmp_path / "serve.log"
    proc, url = _start(_params(tmp_path, "shutdown"), log)
    try:
        rid, _ = _predict(url, np.zeros((8, 8), np.uint8))
        assert _captured(deployed, "shutdown") == []  # buffered: neither size nor time is due
    finally:
        _stop(proc)  # uvicorn shuts down cleanly on SIGTERM (then re-raises it: the status is -15)
    assert "Application shutdown complete" in log.read_text()
    got = _merged(_captured(deployed, "shutdown"))
    assert got["request_id"].tolist() == [rid]


def test_no_capture_writes_nothing(deployed, tmp_path):
    proc, url = _start(_params(tmp_path, "off", flush_seconds=0.2), tmp_path / "serve.log", "--no-capture")
    try:
        rid, answer = _predict(url, np.zeros((2, 8, 8), np.uint8))
        assert answer["request_id"] == rid
    finally:
        _stop(proc)
    assert _captured(deployed, "off") == []

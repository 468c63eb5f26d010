"""The registered champion is portable: standard MLflow tools load and serve it in a virtualenv built from its own
requirements.txt alone — no project code, no TensorFlow — and give this project's TFLite probabilities.

Real tools only: `python -m venv` + `pip install -r requirements.txt` (from the registry), then that venv's
`mlflow models predict` and `mlflow models serve` against the session's tiny workspace (tests/integration/
conftest.py), run from a directory outside the repo with no PYTHONPATH. The reference probabilities come from
pipeline.ml.tflite on the workspace's deploy-variant .tflite, for real test-split images.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pipeline.core import io
from pipeline.ml.tflite import TFLiteModel, softmax
from pipeline.stages.register import PIP_REQUIREMENTS
from tests.helpers_project import ROOT, stop_group
from tests.helpers_s3 import free_port

pytestmark = pytest.mark.integration

N_IMAGES = 8


@pytest.fixture(scope="module")
def model_uri(tiny_workspace) -> str:
    """The champion by alias, as a user serves it."""
    return f"models:/{tiny_workspace.model_name}@champion"


@pytest.fixture(scope="module")
def requirements(tiny_workspace, tmp_path_factory) -> Path:
    """The champion's requirements.txt, downloaded from the workspace's registry (no global MLflow URI set)."""
    import mlflow
    from mlflow import MlflowClient

    uri = tiny_workspace.tracking_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = client.get_model_version_by_alias(tiny_workspace.model_name, "champion")
    assert str(champion.version) == str(tiny_workspace.version)
    location = client.get_model_version_download_uri(tiny_workspace.model_name, champion.version)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{location}/requirements.txt",
                                                    dst_path=str(tmp_path_factory.mktemp("reqs"))))


@pytest.fixture(scope="module")
def clean_venv(requirements, tmp_path_factory, figure) -> Path:
    """A fresh virtualenv with only the model's requirements.txt installed (pip may use its cache)."""
    venv = tmp_path_factory.mktemp("clean") / "venv"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
    result = subprocess.run([str(venv / "bin/pip"), "install", "-q", "-r", str(requirements)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    figure(
        f"clean venv from the champion's requirements.txt ({', '.join(requirements.read_text().split())}) "
        f"built in {time.perf_counter() - started:.0f} s")
    return venv


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    """A working directory outside the repository."""
    cwd = tmp_path_factory.mktemp("outside")
    assert not cwd.resolve().is_relative_to(ROOT)
    return cwd


def venv_env(venv: Path, tracking_uri: str) -> dict[str, str]:
    """The clean venv first on PATH (as if activated), the project's venv off it, no PYTHONPATH or MLflow settings."""
    own_bin = str(Path(sys.executable).parent)
    path = [str(venv / "bin"), *(p for p in os.environ["PATH"].split(os.pathsep) if p != own_bin)]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MLFLOW_") and k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, "PATH": os.pathsep.join(path), "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def env(clean_venv, tiny_workspace) -> dict[str, str]:
    return venv_env(clean_venv, tiny_workspace.tracking_uri)


@pytest.fixture(scope="module")
def images(tiny_workspace) -> np.ndarray:
    """The first test-split images of the workspace, float32 pixels (N, H, W, C)."""
    x, _ = io.read_split(tiny_workspace.root / "data/prepared", "test")
    return x[:N_IMAGES].astype(np.float32)


@pytest.fixture(scope="module")
def expected(tiny_workspace, images) -> np.ndarray:
    """This project's probabilities: pipeline.ml.tflite on the champion's deploy-variant .tflite."""
    record = json.loads((tiny_workspace.root / "reports/registration.json").read_text())
    assert str(record["version"]) == str(tiny_workspace.version)
    tflite = tiny_workspace.root / "models/compressed" / f"{record['deploy_variant']}.tflite"
    return softmax(TFLiteModel(tflite).predict(images))


def assert_same(probabilities, expected: np.ndarray) -> None:
    got = np.asarray(probabilities, dtype=np.float32)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).all()


def test_requirements_are_the_pinned_runtime_only(requirements):
    lines = [line.strip() for line in requirements.read_text().splitlines() if line.strip()]
    assert sorted(lines) == sorted(PIP_REQUIREMENTS)
    assert not any(name in line.lower() for line in lines for name in ("tensorflow", "keras"))


def test_clean_venv_has_neither_the_project_nor_tensorflow(clean_venv, env, outside):
    python = str(clean_venv / "bin/python")
    no_project = subprocess.run([python, "-c", "import pipeline"], cwd=outside, env=env, capture_output=True,
                                text=True)
    assert no_project.returncode != 0 and "No module named 'pipeline'" in no_project.stderr
    probe = "import importlib.util as u; print([m for m in ('tensorflow', 'keras') if u.find_spec(m)])"
    found = subprocess.run([python, "-c", probe], cwd=outside, env=env, capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]"


def test_mlflow_models_predict_matches_the_project(clean_venv, env, outside, model_uri, images, expected, figure):
    request, response = outside / "request.json", outside / "predictions.json"
    request.write_text(json.dumps({"inputs": images.tolist()}))
    result = subprocess.run(
        [str(clean_venv / "bin/mlflow"), "models", "predict", "-m", model_uri, "--env-manager", "local",
         "-i", str(request), "-t", "json", "-o", str(response)],
        cwd=outside, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert_same(json.loads(response.read_text())["predictions"], expected)
    figure(f"clean venv: mlflow models predict -m {model_uri} --env-manager local: {len(expected)} images, "
           f"first {np.round(np.asarray(json.loads(response.read_text())['predictions'][0]), 4).tolist()}")


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Poll `url` until it answers 200; AssertionError (with the log) if the server exits or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"mlflow models serve exited ({proc.returncode}):\n{log.read_text()[-4000:]}"
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.25)
    raise AssertionError(f"mlflow models serve not ready after {timeout:.0f}s:\n{log.read_text()[-4000:]}")


def test_mlflow_models_serve_matches_the_project(clean_venv, env, outside, model_uri, images, expected, figure):
    port, log = free_port(), outside / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(clean_venv / "bin/mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(port)],
            cwd=outside, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    try:
        _wait_ready(f"http://127.0.0.1:{port}/ping", proc, log)
        reply = _post(f"http://127.0.0.1:{port}/invocations", {"inputs": {"image": images.tolist()}})
    finally:
        stop_group(proc)
    assert_same(reply["predictions"], expected)
    figure(f"clean venv: mlflow models serve answered POST /invocations ({len(expected)} images) with the project's "
           f"probabilities; argmax {np.asarray(reply['predictions']).argmax(1).tolist()}")

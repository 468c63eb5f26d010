"""Model tier: the real train stage command on a machine that shows a GPU (a fake nvidia-smi on PATH).

A GPU the backend cannot use stops the stage with what to install (nothing written); `train.device: cpu` trains
anyway and says so in metrics/train.json; float16 mixed precision without a GPU is refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.stages import preprocess
from pipeline.core.config import PreprocessConfig
from tests.helpers import fake_nvidia_smi, good_splits, write_ingested

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("devices")
    write_ingested(root / "ingested", good_splits(3, (8, 8, 1)), ["a", "b", "c"])
    preprocess.run(PreprocessConfig(channels=1), root / "ingested", root / "prepared")
    return root / "prepared"


def _train(tmp_path: Path, prepared: Path, train: dict, gpu: bool) -> subprocess.CompletedProcess:
    """`python -m pipeline.stages.train` with `train` params, PATH showing a GPU or not (KERAS_BACKEND unset)."""
    params = {"train": {"model": "fast_net", "width": 4, "epochs": 1, "batch_size": 16, **train}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "CUDA_VISIBLE_DEVICES", "JAX_PLATFORMS")}
    env["PYTHONPATH"] = str(ROOT)
    if gpu:
        fake_nvidia_smi(tmp_path / "bin")
        env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}"
    cmd = [sys.executable, "-m", "pipeline.stages.train", "--params", str(tmp_path / "params.yaml"), "--data",
           str(prepared), "--model", str(tmp_path / "model.keras"), "--metrics", str(tmp_path / "train.json"),
           "--plots", str(tmp_path / "plots"), "--backup", str(tmp_path / "backup")]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_a_visible_gpu_no_backend_can_use_stops_the_stage(tmp_path, prepared):
    out = _train(tmp_path, prepared, {}, gpu=True)
    assert out.returncode == 2, out.stdout + out.stderr
    message = " ".join(out.stderr.split())
    print(message)  # the loud-failure message, as a user sees it
    assert "NVIDIA H200" in message and "pip install -e '.[gpu]'" in message and "train.device: cpu" in message
    assert not (tmp_path / "model.keras").exists() and not (tmp_path / "train.json").exists()


def test_an_explicit_backend_that_sees_no_gpu_stops_the_stage(tmp_path, prepared):
    out = _train(tmp_path, prepared, {"backend": "jax"}, gpu=True)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "jax backend sees none" in " ".join(out.stderr.split())
    assert not (tmp_path / "model.keras").exists()


def test_device_cpu_trains_on_the_cpu_despite_the_gpu(tmp_path, prepared):
    out = _train(tmp_path, prepared, {"device": "cpu"}, gpu=True)
    assert out.returncode == 0, out.stdout + out.stderr
    metrics = json.loads((tmp_path / "train.json").read_text())
    assert metrics["backend"] == "tensorflow" and metrics["device"] == "cpu" and metrics["gpus"] == 0
    assert metrics["precision"] == "float32" and metrics["strategy"] == "none" and metrics["device_name"]


def test_float16_without_a_gpu_is_refused(tmp_path, prepared):
    out = _train(tmp_path, prepared, {"precision": "mixed_float16"}, gpu=False)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "mixed_float16 but training runs on the CPU" in " ".join(out.stderr.split())


def test_jax_bfloat16_model_loads_and_predicts_in_float32(tmp_path, prepared):
    """A model trained under the other backend in mixed precision: load_float32 (compress/evaluate) agrees with it."""
    out = _train(tmp_path, prepared, {"backend": "jax", "precision": "mixed_bfloat16"}, gpu=False)
    assert out.returncode == 0, out.stdout + out.stderr
    metrics = json.loads((tmp_path / "train.json").read_text())
    assert (metrics["backend"], metrics["precision"], metrics["device"]) == ("jax", "mixed_bfloat16", "cpu")
    import keras

    from pipeline.core import io
    from pipeline.ml.models import load_float32

    saved, model = keras.models.load_model(tmp_path / "model.keras"), load_float32(tmp_path / "model.keras")
    assert {layer.dtype_policy.name for layer in saved.layers} >= {"mixed_bfloat16"}
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    x, _ = io.read_split(prepared, "test")
    mixed, full = np.asarray(saved.predict(x, verbose=0)), np.asarray(model.predict(x, verbose=0))
    assert (mixed.argmax(1) == full.argmax(1)).mean() >= 0.95

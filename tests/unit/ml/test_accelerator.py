"""Backend/device choice for the train stage: GPUs from a (fake) nvidia-smi, loud errors, precision policies."""

from __future__ import annotations

import os

import pytest

from pipeline.core.errors import StageError
from pipeline.ml import accelerator
from pipeline.ml.accelerator import Plan
from tests.helpers import fake_nvidia_smi


@pytest.fixture
def gpu_machine(tmp_path, monkeypatch):
    """PATH starts with a fake nvidia-smi listing two GPUs."""
    fake_nvidia_smi(tmp_path / "bin", ("NVIDIA H200", "NVIDIA H200"))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")


def test_visible_gpus_reads_nvidia_smi(gpu_machine):
    assert accelerator.visible_gpus() == ("NVIDIA H200", "NVIDIA H200")


def test_no_nvidia_smi_means_no_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    assert accelerator.visible_gpus() == ()


def test_failing_nvidia_smi_means_no_gpu(tmp_path, monkeypatch):
    (tmp_path / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    (tmp_path / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert accelerator.visible_gpus() == ()


def test_cpu_machine_auto_is_tensorflow_on_cpu():
    chosen = accelerator.plan("auto", "auto", ())
    assert chosen == Plan("tensorflow", "auto", ()) and not chosen.expects_gpu
    assert accelerator.check_devices(chosen, 0) == "cpu"


def test_visible_gpu_without_a_cuda_backend_stops_before_training(monkeypatch):
    monkeypatch.setattr(accelerator, "gpu_capable", lambda backend: False)
    with pytest.raises(StageError) as err:
        accelerator.plan("auto", "auto", ("NVIDIA H200",))
    message = str(err.value)
    assert "NVIDIA H200" in message and "pip install -e '.[gpu]'" in message and "train.device: cpu" in message


def test_auto_prefers_jax_then_tensorflow_gpu_builds(monkeypatch):
    monkeypatch.setattr(accelerator, "gpu_capable", lambda backend: True)
    assert accelerator.plan("auto", "auto", ("A100",)).backend == "jax"
    monkeypatch.setattr(accelerator, "gpu_capable", lambda backend: backend == "tensorflow")
    assert accelerator.plan("auto", "auto", ("A100",)).backend == "tensorflow"


def test_explicit_cpu_overrides_a_visible_gpu(monkeypatch):
    monkeypatch.setattr(accelerator, "gpu_capable", lambda backend: False)
    chosen = accelerator.plan("auto", "cpu", ("NVIDIA H200",))
    assert chosen.backend == "tensorflow" and not chosen.expects_gpu
    assert accelerator.check_devices(chosen, 0) == "cpu"


def test_gpu_asked_for_on_a_machine_without_one():
    with pytest.raises(StageError, match="no GPU"):
        accelerator.plan("jax", "gpu", ())


def test_backend_that_sees_no_gpu_is_loud():
    chosen = accelerator.plan("jax", "auto", ("NVIDIA H200",))
    with pytest.raises(StageError) as err:
        accelerator.check_devices(chosen, usable_gpus=0)
    assert "jax backend sees none" in str(err.value) and "'.[gpu]'" in str(err.value)
    assert accelerator.check_devices(chosen, usable_gpus=1) == "gpu"


def test_activate_hides_gpus_for_cpu_training(monkeypatch):
    for name in ("KERAS_BACKEND", "CUDA_VISIBLE_DEVICES", "JAX_PLATFORMS"):
        monkeypatch.setenv(name, "")  # recorded, so what activate() sets is undone after the test
        monkeypatch.delenv(name)
    import keras

    accelerator.activate(Plan(keras.backend.backend(), "cpu", ("NVIDIA H200",)))
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "-1" and os.environ["JAX_PLATFORMS"] == "cpu"


def test_activate_refuses_a_backend_switch_after_keras_was_imported():
    import keras

    other = "jax" if keras.backend.backend() != "jax" else "tensorflow"
    with pytest.raises(StageError, match="own process"):
        accelerator.activate(Plan(other, "auto", ()))


@pytest.mark.parametrize(
    ("precision", "backend", "device", "policy"),
    [
        ("auto", "tensorflow", "gpu", "mixed_float16"),
        ("auto", "jax", "gpu", "mixed_bfloat16"),
        ("auto", "jax", "cpu", "float32"),
        ("mixed_bfloat16", "jax", "cpu", "mixed_bfloat16"),
        ("float32", "tensorflow", "gpu", "float32"),
    ],
)
def test_precision_policy(precision, backend, device, policy):
    assert accelerator.precision_policy(precision, backend, device) == policy


def test_float16_on_the_cpu_is_refused():
    with pytest.raises(StageError, match="mixed_float16 but training runs on the CPU"):
        accelerator.precision_policy("mixed_float16", "tensorflow", "cpu")

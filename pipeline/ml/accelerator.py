"""Which Keras backend and device the train stage uses, decided before Keras is imported; loud when a GPU is wasted.

`train.backend` (auto | tensorflow | jax), `train.device` (auto | gpu | cpu) and `train.precision` (auto | float32 |
mixed_float16 | mixed_bfloat16) select them. The machine's GPUs are what `nvidia-smi -L` lists; whether a backend
can use them is checked twice: cheaply here from the installed packages (to pick one under `auto`), and for real
once Keras is imported (`check_devices`). A GPU the chosen backend cannot use stops the stage with what to install,
unless `train.device: cpu` says to train on the CPU. Nothing here imports Keras, TensorFlow or JAX.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

from pipeline.core.errors import StageError

GPU_INSTALL = "pip install -e '.[gpu]' (or `make setup GPU=1`): JAX with CUDA 12, used by train.backend auto or jax"
CPU_OVERRIDE = "or set train.device: cpu in params.yaml to train on the CPU anyway"
MIXED_DEFAULT = {"tensorflow": "mixed_float16", "jax": "mixed_bfloat16"}


@dataclass(frozen=True)
class Plan:
    """The backend to import, whether a GPU is expected, and the GPUs the machine shows (names from nvidia-smi)."""

    backend: str
    device: str  # auto | gpu | cpu, as configured
    visible_gpus: tuple[str, ...]

    @property
    def expects_gpu(self) -> bool:
        """True when training must run on a GPU (one is visible or asked for, and the CPU was not chosen)."""
        return self.device == "gpu" or (self.device == "auto" and bool(self.visible_gpus))


def visible_gpus() -> tuple[str, ...]:
    """GPU names `nvidia-smi -L` lists (empty when the tool is missing or fails): the machine's GPUs."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ()
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    if out.returncode != 0:
        return ()
    lines = [line for line in out.stdout.splitlines() if line.startswith("GPU ")]
    return tuple(line.split(":", 1)[1].split("(UUID")[0].strip() for line in lines)


def _installed(name: str) -> bool:
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def gpu_capable(backend: str) -> bool:
    """Whether the installed packages give `backend` a CUDA build (cheap: package metadata, no import)."""
    if backend == "jax":
        return any(_installed(f"jax-cuda{v}-plugin") for v in (12, 13))
    if backend == "tensorflow":
        return _installed("tensorflow") and not _installed("tensorflow-cpu") and sys.platform == "linux"
    return False


def plan(backend: str, device: str, gpus: tuple[str, ...]) -> Plan:
    """The backend to use: `auto` takes a GPU-capable one when a GPU is expected (JAX first), else TensorFlow.

    Raises StageError when a GPU is asked for but none is visible, or visible but no installed backend can use it.
    """
    if device == "gpu" and not gpus:
        raise StageError("train.device is gpu but this machine shows no GPU (`nvidia-smi -L` lists none).")
    draft = Plan(backend if backend != "auto" else "tensorflow", device, gpus)
    if backend == "auto" and draft.expects_gpu:
        capable = [name for name in ("jax", "tensorflow") if gpu_capable(name)]
        if not capable:
            raise StageError(
                f"this machine has a GPU ({', '.join(gpus)}) but no installed Keras backend can use it; "
                f"install one: {GPU_INSTALL}; {CPU_OVERRIDE}."
            )
        return Plan(capable[0], device, gpus)
    return draft


def activate(chosen: Plan) -> None:
    """Point Keras at the chosen backend (KERAS_BACKEND) and hide the GPUs when training on the CPU.

    Must run before Keras is imported; a process that already imported Keras under another backend cannot switch.
    """
    keras = sys.modules.get("keras")
    if keras is not None and keras.backend.backend() != chosen.backend:
        raise StageError(
            f"Keras is already imported with the {keras.backend.backend()} backend in this process, so train.backend "
            f"{chosen.backend} cannot take effect; run the stage as its own process: python -m pipeline.stages.train"
        )
    os.environ["KERAS_BACKEND"] = chosen.backend
    if chosen.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
        os.environ["JAX_PLATFORMS"] = "cpu"


def check_devices(chosen: Plan, usable_gpus: int) -> str:
    """After Keras is imported: 'gpu' or 'cpu'; StageError when an expected GPU is not usable by the backend."""
    if chosen.expects_gpu and usable_gpus == 0:
        shown = ", ".join(chosen.visible_gpus) or "none"
        raise StageError(
            f"training would run on the CPU: this machine shows GPUs ({shown}) but Keras' {chosen.backend} backend "
            f"sees none. Install a CUDA build: {GPU_INSTALL}; check the NVIDIA driver (`nvidia-smi`); {CPU_OVERRIDE}."
        )
    return "gpu" if usable_gpus > 0 and chosen.device != "cpu" else "cpu"


def precision_policy(precision: str, backend: str, device: str) -> str:
    """The Keras dtype policy: `auto` is mixed precision on a GPU (float16 under TF, bfloat16 under JAX), else float32.

    float16 mixed precision on the CPU is refused (it is emulated there: slower, not faster).
    """
    if precision == "auto":
        return MIXED_DEFAULT[backend] if device == "gpu" else "float32"
    if precision == "mixed_float16" and device != "gpu":
        raise StageError(
            "train.precision is mixed_float16 but training runs on the CPU, where float16 is emulated and slow; "
            "set train.precision to auto or float32 (mixed_bfloat16 runs on CPUs), or train on a GPU "
            f"({GPU_INSTALL})."
        )
    return precision

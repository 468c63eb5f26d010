"""Backend/device facts and the distribution scope, once Keras is imported (the choice: pipeline/ml/accelerator.py).

TensorFlow: GPUs → MirroredStrategy, TF_CONFIG → multi-worker. JAX: several GPUs → keras.distribution.DataParallel.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform


def backend() -> str:
    """The Keras backend in use (tensorflow, jax, torch)."""
    import keras

    return keras.backend.backend()


def gpu_count() -> int:
    """Number of visible GPUs for the active Keras backend."""
    name = backend()
    if name == "tensorflow":
        import tensorflow as tf

        return len(tf.config.list_physical_devices("GPU"))
    if name == "jax":
        import jax

        return sum(1 for d in jax.devices() if d.platform == "gpu")
    if name == "torch":
        import torch

        return torch.cuda.device_count()
    return 0


def configure_precision(policy: str) -> str:
    """Set the global Keras dtype policy (float32, mixed_float16 or mixed_bfloat16). Returns the policy name."""
    import keras

    keras.mixed_precision.set_global_policy(policy)
    return policy


def _jax_scope():
    """Data parallelism over every GPU JAX sees (keras.distribution); one device or the CPU: no distribution."""
    if os.environ.get("TF_CONFIG"):
        from pipeline.core.errors import StageError

        raise StageError("TF_CONFIG (multi-worker training) needs train.backend: tensorflow; it is set under jax.")
    gpus = gpu_count()
    if gpus < 2:
        return contextlib.nullcontext(), "none"
    import keras

    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=keras.distribution.list_devices("gpu")))
    return contextlib.nullcontext(), f"data_parallel({gpus})"


def distribution_scope():
    """A scope to build/compile the model in: multi-worker if TF_CONFIG is set, mirrored on GPUs, else none."""
    if backend() == "jax":
        return _jax_scope()
    if backend() != "tensorflow":
        return contextlib.nullcontext(), "none"
    import tensorflow as tf

    if os.environ.get("TF_CONFIG"):
        json.loads(os.environ["TF_CONFIG"])  # fail early and clearly on malformed TF_CONFIG
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        return strategy.scope(), f"multi_worker({strategy.num_replicas_in_sync})"
    if gpu_count() > 0:
        strategy = tf.distribute.MirroredStrategy()
        return strategy.scope(), f"mirrored({strategy.num_replicas_in_sync})"
    return contextlib.nullcontext(), "none"


def worker_task() -> tuple[str, int] | None:
    """(task type, index) from TF_CONFIG, or None when not running as part of a multi-worker cluster."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    task = json.loads(raw).get("task") or {}
    if not task:
        return None
    return str(task.get("type", "worker")), int(task.get("index", 0))


def is_chief() -> bool:
    """True unless this process is a non-chief worker of a TF_CONFIG cluster.

    The chief is the task of type "chief", or worker 0 when the cluster has no "chief" (the TensorFlow rule).
    Only the chief writes the final model, metrics and plots; the others write to a scratch location.
    """
    task = worker_task()
    if task is None:
        return True
    kind, index = task
    cluster = json.loads(os.environ["TF_CONFIG"]).get("cluster") or {}
    return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in cluster)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else (platform.processor() or platform.machine())


def device_name(gpus: int) -> str:
    """The first GPU's name as the backend reports it, or the CPU's model name when it sees none (`gpus` == 0)."""
    name = backend()
    if gpus == 0:
        return _cpu_name()
    if name == "jax":
        import jax

        return str(next(d for d in jax.devices() if d.platform == "gpu").device_kind)
    if name == "tensorflow":
        import tensorflow as tf

        details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
        return str(details.get("device_name", "GPU"))
    return "GPU"


def describe() -> dict:
    """Small JSON-able summary of the compute environment for metrics and lineage."""
    import keras

    gpus = gpu_count()
    return {
        "backend": backend(),
        "device": "gpu" if gpus else "cpu",
        "device_name": device_name(gpus),
        "gpus": gpus,
        "keras": keras.__version__,
        "cpus": os.cpu_count(),
    }

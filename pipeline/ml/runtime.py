"""Backend/device facts and the distribution scope.

GPUs → mixed precision + MirroredStrategy; TF_CONFIG → multi-worker.
"""

from __future__ import annotations

import contextlib
import json
import os


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


def configure_precision(mode: str) -> str:
    """Set the global Keras dtype policy: 'auto' → mixed precision only on GPU. Returns the policy name."""
    import keras

    use_mixed = mode == "on" or (mode == "auto" and gpu_count() > 0)
    policy = ("mixed_bfloat16" if backend() == "jax" else "mixed_float16") if use_mixed else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy


def distribution_scope():
    """A scope to build/compile the model in: multi-worker if TF_CONFIG is set, mirrored on GPUs, else none."""
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


def describe() -> dict:
    """Small JSON-able summary of the compute environment for metrics and lineage."""
    import keras

    return {"backend": backend(), "gpus": gpu_count(), "keras": keras.__version__, "cpus": os.cpu_count()}

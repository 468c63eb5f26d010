"""Keras 3 + MultiWorkerMirroredStrategy: the workarounds that make synchronous multi-worker training work.

They touch Keras private APIs (keras-team/keras#20585) and are pinned to keras 3.15.1: re-check them on upgrade.
Used only when TF_CONFIG describes a cluster (see pipeline/ml/runtime.py).
"""

from __future__ import annotations


def build_for_multi_worker(model, batch) -> None:
    """Work around keras-team/keras#20585 (Keras 3 + MultiWorkerMirroredStrategy).

    fit()/evaluate() reduce their first PerReplica batch across workers (strategy.reduce on an (x, y) tuple)
    just to build the model symbolically, and MultiWorkerMirroredStrategy rejects a nested value there.
    Build model, loss, metric and optimizer state from one local batch instead (inside the strategy scope,
    identically on every worker, so variable creation stays in lockstep), then skip that step.
    """
    model._symbolic_build(data_batch=batch)
    model._maybe_symbolic_build = lambda *args, **kwargs: None
    patch_multi_worker_mean()


def patch_multi_worker_mean() -> None:
    """Work around the second half of keras-team/keras#20585: under MultiWorkerMirroredStrategy the per-step
    logs (scalar loss/metrics) are averaged with strategy.reduce("MEAN", v, axis=0), which fails on a scalar.
    Average them across workers with axis=None instead; every other case keeps Keras' own reduction.
    """
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    original = trainer.reduce_per_replica
    if getattr(original, "multi_worker_patch", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=0 if v.shape.rank else None), values)
        return original(values, strategy, reduction)

    reduce_per_replica.multi_worker_patch = True  # type: ignore[attr-defined]  # applied once per process
    trainer.reduce_per_replica = reduce_per_replica


def average_non_trainable(model) -> None:
    """Average float non-trainable weights (BatchNorm moving mean/variance) across workers.

    Gradients are all-reduced, so trainable weights are identical on every worker, but Keras' BatchNorm
    updates its moving statistics from each worker's local batches only. Averaging them (as e.g. timm's
    distribute_bn does) gives every worker, and so the chief's saved model, the same statistics, estimated
    from all workers' data. Every worker must call this (collective all-reduce, same variable order).
    """
    import tensorflow as tf

    strategy = model.distribute_strategy
    for variable in model.non_trainable_variables:
        if "float" in str(variable.dtype):
            # a plain tensor: strategy.reduce returns a MirroredVariable unchanged, assuming it is in sync
            local = tf.identity(variable.value)
            variable.assign(strategy.reduce("MEAN", local, axis=None))

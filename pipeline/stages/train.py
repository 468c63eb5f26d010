"""Train stage: Keras 3 model on prepared shards; resumable, seeded, GPU-aware; writes model, metrics, curves."""

from __future__ import annotations

import csv
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.core import io
from pipeline.core.config import TrainConfig
from pipeline.core.errors import StageError
from pipeline.ml.batching import make_batches


def _callbacks(keras, backup_dir: Path, history_csv: Path, epoch_times: list[float]):
    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_times.append(time.perf_counter() - self._t)

    return [
        # CSV row first, then the checkpoint: a kill between the two can only make the resumed run repeat an epoch
        # (deduplicated by _write_history), never lose one. double_checkpoint: a kill that tears the checkpoint
        # file being written resumes from the previous one instead of failing to load.
        keras.callbacks.CSVLogger(str(history_csv), append=True),
        keras.callbacks.BackupAndRestore(str(backup_dir / "state"), save_freq="epoch", delete_checkpoint=True,
                                         double_checkpoint=True),
        EpochTimer(),
    ]


IN_MEMORY_BYTES = 1_500_000_000  # float32 copy of train+val that may live in memory


def _fit_inputs(keras, x, y, x_val, y_val, num_classes: int, batch_size: int, seed: int,
                multi_worker: bool) -> dict:
    """fit() inputs: float32 arrays when they fit in memory (Keras' own prefetching path; faster on CPU
    than a Python PyDataset for small models); otherwise the streaming PyDataset. Multi-worker keeps the
    PyDataset (its batches build the model, see _build_for_multi_worker)."""
    if multi_worker or (x.size + x_val.size) * 4 > IN_MEMORY_BYTES:
        return {"x": make_batches(keras, x, y, num_classes, batch_size, True, seed),
                "validation_data": make_batches(keras, x_val, y_val, num_classes, 512, False, seed)}
    eye = np.eye(num_classes, dtype="float32")
    return {"x": x.astype("float32"), "y": eye[y.astype(np.int64)], "batch_size": batch_size, "shuffle": True,
            "validation_data": (x_val.astype("float32"), eye[y_val.astype(np.int64)]), "validation_batch_size": 512}


def _build_for_multi_worker(model, batch) -> None:
    """Work around keras-team/keras#20585 (Keras 3 + MultiWorkerMirroredStrategy).

    fit()/evaluate() reduce their first PerReplica batch across workers (strategy.reduce on an (x, y) tuple)
    just to build the model symbolically, and MultiWorkerMirroredStrategy rejects a nested value there.
    Build model, loss, metric and optimizer state from one local batch instead (inside the strategy scope,
    identically on every worker, so variable creation stays in lockstep), then skip that step.
    """
    model._symbolic_build(data_batch=batch)
    model._maybe_symbolic_build = lambda *args, **kwargs: None
    _patch_multi_worker_mean()


def _patch_multi_worker_mean() -> None:
    """Work around the second half of keras-team/keras#20585: under MultiWorkerMirroredStrategy the per-step
    logs (scalar loss/metrics) are averaged with strategy.reduce("MEAN", v, axis=0), which fails on a scalar.
    Average them across workers with axis=None instead; every other case keeps Keras' own reduction."""
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    original = trainer.reduce_per_replica
    if getattr(original, "multi_worker_patch", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            return tree.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=0 if v.shape.rank else None), values)
        return original(values, strategy, reduction)

    reduce_per_replica.multi_worker_patch = True
    trainer.reduce_per_replica = reduce_per_replica


def _average_non_trainable(model) -> None:
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


def _write_history(history_csv: Path, dest: Path) -> None:
    """Copy the history CSV with one row per epoch (the last: a resumed run may repeat the epoch it was killed in)."""
    with open(history_csv, newline="") as fh:
        reader = csv.DictReader(fh)
        fields, rows = reader.fieldnames or ["epoch"], {int(r["epoch"]): r for r in reader}
    with io.atomic_path(dest) as tmp, open(tmp, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows[k] for k in sorted(rows))


def _read_history(history_csv: Path) -> dict[str, list[float]]:
    """History rows as columns; on resume the CSV holds earlier epochs too (last row per epoch wins)."""
    with open(history_csv) as fh:
        rows = {int(r["epoch"]): r for r in csv.DictReader(fh)}
    ordered = [rows[k] for k in sorted(rows)]
    keys = [k for k in (ordered[0] if ordered else {}) if k != "epoch"]
    return {k: [float(r[k]) for r in ordered] for k in keys}


def run(cfg: TrainConfig, seed: int, data_dir: Path, model_path: Path, metrics_path: Path, plots_dir: Path,
        backup_dir: Path) -> dict:
    import keras

    from pipeline.ml import plots

    from pipeline.ml import runtime
    from pipeline.ml.models import build_model

    stats = io.read_json(Path(data_dir) / "stats.json")
    x_train, y_train = io.read_split(data_dir, "train")
    x_val, y_val = io.read_split(data_dir, "val")
    if cfg.max_train_samples:
        x_train, y_train = x_train[: cfg.max_train_samples], y_train[: cfg.max_train_samples]
    if len(x_val) == 0:
        raise StageError(f"{data_dir}: the val split is empty; set ingest.val_fraction > 0 in params.yaml.")
    num_classes = len(stats["class_names"])

    keras.utils.set_random_seed(seed)
    policy = runtime.configure_precision(cfg.mixed_precision)
    backup_dir = Path(backup_dir)
    chief = runtime.is_chief()
    if not chief:  # multi-worker: each worker keeps its own BackupAndRestore dir, never the chief's
        kind, index = runtime.worker_task()
        backup_dir = backup_dir.with_name(f"{backup_dir.name}-{kind}{index}")
    resuming = (backup_dir / "state").exists()
    if not resuming:
        shutil.rmtree(backup_dir, ignore_errors=True)
    backup_dir.mkdir(parents=True, exist_ok=True)
    history_csv = backup_dir / "history.csv"
    if not chief:
        # Every worker runs the same synchronous fit and ends with the same weights, but only the chief writes
        # the real outputs (the documented Keras pattern); the others write theirs into their own backup dir,
        # which is deleted at the end.
        scratch = backup_dir / "discarded"
        model_path, metrics_path, plots_dir = scratch / "model.keras", scratch / "train.json", scratch / "plots"

    fit_inputs = _fit_inputs(keras, x_train, y_train, x_val, y_val, num_classes, cfg.batch_size, seed,
                             multi_worker=runtime.worker_task() is not None)
    scope, strategy = runtime.distribution_scope()
    steps = cfg.epochs * -(-len(x_train) // cfg.batch_size)
    with scope:
        model = build_model(cfg.model, stats["image_shape"], num_classes, stats["mean"], stats["std"],
                            flip=cfg.augment.flip, translate=cfg.augment.translate, width=cfg.width)
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=max(1, steps - steps // 10), warmup_target=cfg.learning_rate,
            warmup_steps=max(1, steps // 10), alpha=0.01)
        model.compile(
            optimizer=keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay),
            loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=cfg.label_smoothing),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        )
        if strategy.startswith("multi_worker"):
            _build_for_multi_worker(model, fit_inputs["x"][0])

    epoch_times: list[float] = []
    started = time.perf_counter()
    model.fit(**fit_inputs, epochs=cfg.epochs,
              callbacks=_callbacks(keras, backup_dir, history_csv, epoch_times),
              verbose=1 if sys.stdout.isatty() else 2)
    wall = time.perf_counter() - started
    if strategy.startswith("multi_worker"):
        _average_non_trainable(model)

    with io.atomic_path(model_path) as tmp:
        model.save(tmp)
    history = _read_history(history_csv)
    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    _write_history(history_csv, plots_dir / "history.csv")
    plots.training_curves(history, plots_dir / "training_curves.png")

    steady = epoch_times[1:] or epoch_times
    metrics = {
        "model": cfg.model,
        "params": int(model.count_params()),
        "epochs": cfg.epochs,
        "epochs_run_this_process": len(epoch_times),
        "resumed": resuming,
        "train_samples": int(len(x_train)),
        "accuracy": history["accuracy"][-1],
        "loss": history["loss"][-1],
        "val_accuracy": history["val_accuracy"][-1],
        "val_loss": history["val_loss"][-1],
        "best_val_accuracy": max(history["val_accuracy"]),
        "fit_seconds": round(wall, 2),
        "epoch_seconds": [round(t, 2) for t in epoch_times],
        "images_per_second": round(len(x_train) / float(np.median(steady)), 1) if steady else None,
        "dtype_policy": policy,
        "strategy": strategy,
        **runtime.describe(),
    }
    io.write_json(metrics_path, metrics)
    shutil.rmtree(backup_dir, ignore_errors=True)
    return metrics

"""Train stage: Keras 3 model on prepared shards; resumable, seeded, GPU-aware; writes model, metrics, curves."""

from __future__ import annotations

import csv
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from pipeline import io
from pipeline.config import TrainConfig
from pipeline.errors import StageError


def make_batches(keras, x: np.ndarray, y: np.ndarray, num_classes: int, batch_size: int, shuffle: bool, seed: int):
    """A backend-agnostic PyDataset: uint8 images → float32 batches with one-hot labels, reshuffled per epoch."""

    class ArrayBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.order = np.arange(len(x))
            self.epoch = 0
            self._reshuffle()

        def _reshuffle(self):
            if shuffle:
                self.order = np.random.default_rng(seed + self.epoch).permutation(len(x))

        def __len__(self):
            return -(-len(x) // batch_size)

        def __getitem__(self, i):
            idx = np.sort(self.order[i * batch_size:(i + 1) * batch_size])
            return x[idx].astype("float32"), np.eye(num_classes, dtype="float32")[y[idx].astype(np.int64)]

        def on_epoch_end(self):
            self.epoch += 1
            self._reshuffle()

    return ArrayBatches()


def _callbacks(keras, backup_dir: Path, history_csv: Path, epoch_times: list[float]):
    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_times.append(time.perf_counter() - self._t)

    return [
        keras.callbacks.BackupAndRestore(str(backup_dir / "state"), save_freq="epoch", delete_checkpoint=True),
        keras.callbacks.CSVLogger(str(history_csv), append=True),
        EpochTimer(),
    ]


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

    from pipeline import plots, runtime
    from pipeline.models import build_model

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
    resuming = (backup_dir / "state").exists()
    if not resuming:
        shutil.rmtree(backup_dir, ignore_errors=True)
    backup_dir.mkdir(parents=True, exist_ok=True)
    history_csv = backup_dir / "history.csv"

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

    train_data = make_batches(keras, x_train, y_train, num_classes, cfg.batch_size, True, seed)
    val_data = make_batches(keras, x_val, y_val, num_classes, 512, False, seed)
    epoch_times: list[float] = []
    started = time.perf_counter()
    model.fit(train_data, validation_data=val_data, epochs=cfg.epochs,
              callbacks=_callbacks(keras, backup_dir, history_csv, epoch_times),
              verbose=1 if sys.stdout.isatty() else 2)
    wall = time.perf_counter() - started

    with io.atomic_path(model_path) as tmp:
        model.save(tmp)
    history = _read_history(history_csv)
    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(history_csv, plots_dir / "history.csv")
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

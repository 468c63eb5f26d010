"""Train stage: Keras 3 model on prepared shards; TensorFlow or JAX, CPU or GPU; resumable, seeded; writes
model, metrics, curves.

Command: `python -m pipeline.stages.train` (what dvc.yaml runs) or `mlops train`.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from pipeline.core import io
from pipeline.core.command import DEFAULT_PARAMS, ParamsOpt, call, load, path_or
from pipeline.core.config import TrainConfig
from pipeline.core.errors import StageError
from pipeline.ml.batching import make_batches
from pipeline.ml.history import read_history, write_history


def _callbacks(keras, backup_dir: Path, history_csv: Path, epoch_times: list[float]):
    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_times.append(time.perf_counter() - self._t)

    return [
        # CSV row first, then the checkpoint: a kill between the two can only make the resumed run repeat an epoch
        # (deduplicated by write_history), never lose one. double_checkpoint: a kill that tears the checkpoint
        # file being written resumes from the previous one instead of failing to load.
        keras.callbacks.CSVLogger(str(history_csv), append=True),
        keras.callbacks.BackupAndRestore(
            str(backup_dir / "state"), save_freq="epoch", delete_checkpoint=True, double_checkpoint=True
        ),
        EpochTimer(),
    ]


IN_MEMORY_BYTES = 1_500_000_000  # float32 copy of train+val that may live in memory


def fit_inputs(keras, x, y, x_val, y_val, num_classes: int, batch_size: int, seed: int, multi_worker: bool) -> dict:
    """fit() inputs: float32 arrays when they fit in memory (Keras' own prefetching path; faster on CPU
    than a Python PyDataset for small models); otherwise the streaming PyDataset. Multi-worker keeps the
    PyDataset (its batches build the model, see build_for_multi_worker).
    """
    if multi_worker or (x.size + x_val.size) * 4 > IN_MEMORY_BYTES:
        return {
            "x": make_batches(keras, x, y, num_classes, batch_size, True, seed),
            "validation_data": make_batches(keras, x_val, y_val, num_classes, 512, False, seed),
        }
    eye = np.eye(num_classes, dtype="float32")
    return {
        "x": x.astype("float32"),
        "y": eye[y.astype(np.int64)],
        "batch_size": batch_size,
        "shuffle": True,
        "validation_data": (x_val.astype("float32"), eye[y_val.astype(np.int64)]),
        "validation_batch_size": 512,
    }


def _load_splits(cfg: TrainConfig, data_dir: Path) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """stats.json and the train/val arrays (train capped at cfg.max_train_samples); StageError on an empty val."""
    stats = io.read_json(Path(data_dir) / "stats.json")
    x_train, y_train = io.read_split(data_dir, "train")
    x_val, y_val = io.read_split(data_dir, "val")
    if cfg.max_train_samples:
        x_train, y_train = x_train[: cfg.max_train_samples], y_train[: cfg.max_train_samples]
    if len(x_val) == 0:
        raise StageError(f"{data_dir}: the val split is empty; set ingest.val_fraction > 0 in params.yaml.")
    return stats, x_train, y_train, x_val, y_val


def _outputs(backup_dir: Path, model_path: Path, metrics_path: Path, plots_dir: Path) -> tuple[dict, bool]:
    """Where this process writes ({backup, model, metrics, plots}) and whether it resumes a killed run.

    Multi-worker: every worker runs the same synchronous fit and ends with the same weights, but only the chief
    writes the real outputs (the documented Keras pattern); the others keep their own BackupAndRestore dir and
    write into it, and it is deleted at the end.
    """
    from pipeline.ml import runtime

    backup_dir = Path(backup_dir)
    task = runtime.worker_task()
    if task is not None and not runtime.is_chief():
        kind, index = task
        backup_dir = backup_dir.with_name(f"{backup_dir.name}-{kind}{index}")
        scratch = backup_dir / "discarded"
        model_path, metrics_path, plots_dir = scratch / "model.keras", scratch / "train.json", scratch / "plots"
    resuming = (backup_dir / "state").exists()
    if not resuming:
        shutil.rmtree(backup_dir, ignore_errors=True)
    backup_dir.mkdir(parents=True, exist_ok=True)
    return {
        "backup": backup_dir,
        "model": Path(model_path),
        "metrics": Path(metrics_path),
        "plots": Path(plots_dir),
    }, resuming


def compiled_model(keras, cfg: TrainConfig, stats: dict, num_classes: int, steps: int):
    """The configured architecture with AdamW + warmup/cosine schedule and a one-hot cross-entropy loss."""
    from pipeline.ml.models import build_model
    from pipeline.ml.schedule import warmup_cosine

    model = build_model(
        cfg.model,
        stats["image_shape"],
        num_classes,
        stats["mean"],
        stats["std"],
        flip=cfg.augment.flip,
        translate=cfg.augment.translate,
        width=cfg.width,
    )
    schedule = warmup_cosine(
        keras, cfg.learning_rate, warmup_steps=max(1, steps // 10), decay_steps=max(1, steps - steps // 10), alpha=0.01
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=cfg.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )
    return model


def _budget_plan(cfg: TrainConfig, stats, num_classes, fit_inputs, n_train, n_val, backup, started) -> dict | None:
    """With `train.budget_minutes`: the epochs that fit the budget (pipeline/ml/budget.py) and how they were found."""
    if cfg.budget_minutes is None:
        return None
    import keras

    from pipeline.ml.budget import plan_epochs

    def build(steps: int):
        return compiled_model(keras, cfg, stats, num_classes, steps)

    plan = plan_epochs(cfg.budget_minutes, started, build, fit_inputs, n_train, n_val, cfg.batch_size, backup)
    return {"minutes": cfg.budget_minutes, **asdict(plan)}


def _save(model, out: dict, history_csv: Path) -> dict[str, list[float]]:
    """Write the model (atomically), the per-epoch history CSV and the curves PNG; return the history.

    The .keras file holds the architecture and weights without the optimizer (an uncompiled copy): it loads with
    plain `keras.models.load_model` under either backend; a killed run resumes from BackupAndRestore, not from it.
    """
    import keras

    from pipeline.ml import plots

    inference = keras.Model.from_config(model.get_config())  # clone_model would copy the compile config too
    inference.set_weights(model.get_weights())
    with io.atomic_path(out["model"]) as tmp:
        inference.save(tmp)
    history = read_history(history_csv)
    out["plots"].mkdir(parents=True, exist_ok=True)
    write_history(history_csv, out["plots"] / "history.csv")
    plots.training_curves(history, out["plots"] / "training_curves.png")
    return history


def _metrics(
    cfg: TrainConfig,
    model,
    history: dict,
    epoch_times: list[float],
    n_train: int,
    wall: float,
    resumed: bool,
    policy: str,
    strategy: str,
    budget: dict | None,
) -> dict:
    """metrics/train.json: final and best scores, throughput, how it ran (precision, strategy, device), the budget."""
    from pipeline.ml import runtime

    steady = epoch_times[1:] or epoch_times
    return {
        "model": cfg.model,
        "params": int(model.count_params()),
        "epochs": budget["epochs"] if budget else cfg.epochs,
        "budget": budget,
        "epochs_run_this_process": len(epoch_times),
        "resumed": resumed,
        "train_samples": int(n_train),
        "accuracy": history["accuracy"][-1],
        "loss": history["loss"][-1],
        "val_accuracy": history["val_accuracy"][-1],
        "val_loss": history["val_loss"][-1],
        "best_val_accuracy": max(history["val_accuracy"]),
        "fit_seconds": round(wall, 2),
        "epoch_seconds": [round(t, 2) for t in epoch_times],
        "images_per_second": round(n_train / float(np.median(steady)), 1) if steady else None,
        "precision": policy,
        "strategy": strategy,
        **runtime.describe(),
    }


def run(
    cfg: TrainConfig, seed: int, data_dir: Path, model_path: Path, metrics_path: Path, plots_dir: Path, backup_dir: Path
) -> dict:
    """Train the configured model on the configured backend/device; resumes from `backup_dir` after a kill.

    The backend and device are chosen before Keras is imported (pipeline/ml/accelerator.py): a visible GPU
    that the backend cannot use stops the stage instead of training slowly on the CPU.

    Reads: `data_dir/stats.json` and the train/val shards. Writes: `model_path` (.keras, atomically),
    `metrics_path` (metrics/train.json), `plots_dir/history.csv` and `plots_dir/training_curves.png`;
    `backup_dir` holds BackupAndRestore state while training and is removed at the end.
    """
    from pipeline.ml import accelerator

    stage_started = time.perf_counter()
    chosen = accelerator.plan(cfg.backend, cfg.device, accelerator.visible_gpus())
    accelerator.activate(chosen)
    import keras

    from pipeline.ml import multiworker, runtime

    device = accelerator.check_devices(chosen, runtime.gpu_count())
    policy = runtime.configure_precision(accelerator.precision_policy(cfg.precision, chosen.backend, device))
    stats, x_train, y_train, x_val, y_val = _load_splits(cfg, data_dir)
    num_classes = len(stats["class_names"])
    out, resuming = _outputs(backup_dir, model_path, metrics_path, plots_dir)
    history_csv = out["backup"] / "history.csv"
    multi = runtime.worker_task() is not None
    batches = fit_inputs(keras, x_train, y_train, x_val, y_val, num_classes, cfg.batch_size, seed, multi)
    budget = _budget_plan(cfg, stats, num_classes, batches, len(x_train), len(x_val), out["backup"], stage_started)
    epochs = budget["epochs"] if budget else cfg.epochs
    keras.utils.set_random_seed(seed)  # after the budget probe: the same initial weights with or without one
    scope, strategy = runtime.distribution_scope()
    with scope:
        model = compiled_model(keras, cfg, stats, num_classes, epochs * -(-len(x_train) // cfg.batch_size))
        if strategy.startswith("multi_worker"):
            multiworker.build_for_multi_worker(model, batches["x"][0])
    epoch_times: list[float] = []
    started = time.perf_counter()
    model.fit(
        **batches,
        epochs=epochs,
        callbacks=_callbacks(keras, out["backup"], history_csv, epoch_times),
        verbose=1 if sys.stdout.isatty() else 2,
    )
    wall = time.perf_counter() - started
    if strategy.startswith("multi_worker"):
        multiworker.average_non_trainable(model)
    history = _save(model, out, history_csv)
    metrics = _metrics(cfg, model, history, epoch_times, len(x_train), wall, resuming, policy, strategy, budget)
    io.write_json(out["metrics"], metrics)
    shutil.rmtree(out["backup"], ignore_errors=True)
    return metrics


def command(
    params: ParamsOpt = DEFAULT_PARAMS,
    data: Annotated[Path | None, typer.Option(help="Prepared shards directory (default: paths.prepared).")] = None,
    model: Annotated[Path | None, typer.Option(help="Trained Keras model to write (default: paths.model).")] = None,
    metrics: Annotated[Path | None, typer.Option(help="Metrics JSON to write (default: paths.train_metrics).")] = None,
    plots: Annotated[
        Path | None, typer.Option(help="Directory for history CSV and curve PNG (default: paths.train_plots).")
    ] = None,
    backup: Annotated[
        Path | None,
        typer.Option(help="BackupAndRestore dir; a killed run resumes from it (default: paths.train_backup)."),
    ] = None,
) -> None:
    """Train the configured Keras 3 model (resumable, seeded, GPU-aware)."""
    cfg = load(params)
    paths = cfg.paths
    model = path_or(model, paths.model)
    result = call(
        run,
        cfg.train,
        seed=cfg.seed,
        data_dir=path_or(data, paths.prepared),
        model_path=model,
        metrics_path=path_or(metrics, paths.train_metrics),
        plots_dir=path_or(plots, paths.train_plots),
        backup_dir=path_or(backup, paths.train_backup),
    )
    typer.echo(f"trained {cfg.train.model}: val_accuracy={result['val_accuracy']:.4f} -> {model}")


if __name__ == "__main__":
    typer.run(command)

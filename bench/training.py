"""Training overhead: the train stage vs a bare Keras script doing the same work, alternating, each run in its own
fresh process.

Same work on both sides: the same model (seed CNN by default, no augmentation), AdamW with the warmup + cosine
schedule of pipeline/ml/schedule.py, one-hot cross-entropy, batch 128 and validation batch 512, the same epochs,
seed, backend (TensorFlow, float32, CPU) and the same prepared arrays fed to `fit` in memory (the path the stage's
`fit_inputs` picks by default). The stage adds what makes it a stage: backend/device planning, CSV history,
BackupAndRestore checkpoints every epoch, the saved model, curves and metrics. Images/s = train images ÷ median
epoch after the first (both sides time epochs with the same callback).

    python bench/training.py [--runs 3] [--epochs 3] [--model seed_cnn] [--max-train-samples N] [--max-per-class N]
    python bench/training.py --worker {bare,stage} --prepared DIR ...   # one measured run (used by the above)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from common import ROOT, alternate, compare, prepared_data, python_json, save

HERE = Path(__file__).resolve()


def bench_config(args: argparse.Namespace):
    """params.yaml's `train:` with this benchmark's model, epochs and sample cap; augmentation off, TF float32 CPU.

    Args:
        args: the command line (model, epochs, max_train_samples).

    Returns:
        The TrainConfig both sides train with.
    """
    from pipeline.core.config import load_params

    train = load_params(ROOT / "params.yaml").train
    return type(train).model_validate(
        train.model_dump()
        | {
            "model": args.model,
            "epochs": args.epochs,
            "budget_minutes": None,  # the epochs above, on both sides (no budget-sized schedule)
            "max_train_samples": args.max_train_samples,
            "augment": {"flip": False, "translate": 0.0},
            "backend": "tensorflow",
            "device": "cpu",
            "precision": "float32",
        }
    )


def _epoch_timer(keras, times: list[float]):
    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self._t)

    return EpochTimer()


def bare(cfg, seed: int, prepared: Path) -> dict:
    """The same recipe written as a plain Keras script: build, compile, fit on in-memory float32 arrays."""
    os.environ["KERAS_BACKEND"] = cfg.backend  # as the stage's accelerator.activate does for a CPU plan
    os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
    import keras

    from pipeline.core import io
    from pipeline.ml.models import build_model
    from pipeline.ml.schedule import warmup_cosine

    stats = io.read_json(prepared / "stats.json")
    x, y = io.read_split(prepared, "train")
    x, y = x[: cfg.max_train_samples], y[: cfg.max_train_samples]
    xv, yv = io.read_split(prepared, "val")
    n_classes = len(stats["class_names"])
    keras.utils.set_random_seed(seed)
    aug = cfg.augment
    model = build_model(
        cfg.model, stats["image_shape"], n_classes, stats["mean"], stats["std"], **aug.model_dump(), width=cfg.width
    )
    steps = cfg.epochs * -(-len(x) // cfg.batch_size)
    warmup = max(1, steps // 10)
    schedule = warmup_cosine(keras, cfg.learning_rate, warmup, max(1, steps - warmup), alpha=0.01)
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=cfg.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )
    eye = np.eye(n_classes, dtype="float32")
    times: list[float] = []
    started = time.perf_counter()
    hist = model.fit(
        x.astype("float32"),
        eye[y.astype(np.int64)],
        batch_size=cfg.batch_size,
        epochs=cfg.epochs,
        shuffle=True,
        validation_data=(xv.astype("float32"), eye[yv.astype(np.int64)]),
        validation_batch_size=512,
        callbacks=[_epoch_timer(keras, times)],
        verbose=2,
    )
    fit = time.perf_counter() - started
    steady = times[1:] or times
    return {
        "images_per_second": round(len(x) / float(np.median(steady)), 1),
        "fit_seconds": round(fit, 2),
        "val_accuracy": round(float(hist.history["val_accuracy"][-1]), 4),
        "train_samples": len(x),
    }


def stage(cfg, seed: int, prepared: Path) -> dict:
    """One run of the real train stage (pipeline.stages.train.run) into a scratch directory."""
    from pipeline.stages import train as train_stage

    with tempfile.TemporaryDirectory(prefix="bench-train-stage-") as scratch:
        out = Path(scratch)
        m = train_stage.run(cfg, seed, prepared, out / "model.keras", out / "train.json", out / "plots", out / "backup")
    return {
        "images_per_second": m["images_per_second"],
        "fit_seconds": m["fit_seconds"],
        "val_accuracy": round(m["val_accuracy"], 4),
        "train_samples": m["train_samples"],
    }


def worker(args: argparse.Namespace) -> None:
    """One measured run in this (fresh) process; its figures as the last stdout line."""
    from pipeline.core.config import load_params

    seed = load_params(ROOT / "params.yaml").seed
    side = {"bare": bare, "stage": stage}[args.worker]
    print(json.dumps(side(bench_config(args), seed, Path(args.prepared))), flush=True)


def main() -> None:
    """Alternate bare / stage runs (each a fresh process) and save the comparison as the `training` section."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="runs per side, alternating bare/stage")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--model", default="seed_cnn", choices=["seed_cnn", "fast_net"])
    ap.add_argument("--max-train-samples", type=int, default=None)
    ap.add_argument("--max-per-class", type=int, default=None, help="ingest cap (quick trials)")
    ap.add_argument("--worker", choices=["bare", "stage"], help=argparse.SUPPRESS)
    ap.add_argument("--prepared", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    cfg = bench_config(args)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as work:
        prepared = prepared_data(Path(work), args.max_per_class)
        common = ["--epochs", str(args.epochs), "--model", args.model, "--prepared", str(prepared)]
        if args.max_train_samples:
            common += ["--max-train-samples", str(args.max_train_samples)]
        sides = {s: lambda _i, s=s: python_json([str(HERE), "--worker", s, *common]) for s in ("bare", "stage")}
        runs = alternate(sides, args.runs)
    save(
        "training",
        {
            "method": "like-for-like, alternating, each run a fresh process",
            "workload": {
                "model": cfg.model,
                "epochs": cfg.epochs,
                "batch_size": cfg.batch_size,
                "validation_batch_size": 512,
                "optimizer": "AdamW + warmup/cosine (pipeline/ml/schedule.py)",
                "loss": "one-hot categorical cross-entropy",
                "train_samples": runs[0]["train_samples"],
                "backend": f"{cfg.backend} {cfg.precision} {cfg.device}",
                "max_per_class": args.max_per_class,
            },
            "runs": runs,
            "images_per_second": compare(runs, "images_per_second", "bare", "stage", 1),
            "fit_seconds": compare(runs, "fit_seconds", "bare", "stage"),
            "targets": {"images_per_second.ratio_of_medians": ">= 0.95"},
        },
    )


if __name__ == "__main__":
    main()

"""Training: the train stage vs a bare Keras script of the seed CNN (same model, same arrays, same epochs),
and accuracy-at-budget for both model choices (each trained with a schedule sized to its budget).

    python bench/training.py [--throughput-epochs 3] [--fast-epochs 3 6 14] [--seed-epochs 4 10 20]
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

from common import ROOT, save


def prepared_data(workdir: Path) -> Path:
    """Full Fashion-MNIST through the real ingest + preprocess stages."""
    from pipeline.core.config import load_params
    from pipeline.stages import ingest, preprocess

    params = load_params(ROOT / "params.yaml")
    ingest.run(params.ingest, params.seed, workdir / "ingested", accepted_dir=None)
    preprocess.run(params.preprocess, workdir / "ingested", workdir / "prepared")
    return workdir / "prepared"


def bare_seed_cnn(x, y, x_val, y_val, epochs: int, batch_size: int) -> dict:
    """The article's script: 3 conv + Dense(1024), model.fit on in-memory arrays."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input(x.shape[1:]),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(1024, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t)

    hist = model.fit(
        x.astype("float32"),
        y,
        batch_size=batch_size,
        epochs=epochs,
        verbose=0,
        validation_data=(x_val.astype("float32"), y_val),
        callbacks=[Timer()],
    )
    steady = times[1:] or times
    return {
        "images_per_second": len(x) / float(np.median(steady)),
        "val_accuracy": float(hist.history["val_accuracy"][-1]),
        "epoch_seconds": times,
    }


def stage(prepared: Path, out: Path, **train) -> dict:
    from pipeline.core.config import TrainConfig
    from pipeline.stages import train as train_stage

    cfg = TrainConfig(**train)
    return train_stage.run(cfg, 0, prepared, out / "model.keras", out / "train.json", out / "plots", out / "backup")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--throughput-epochs", type=int, default=3)
    ap.add_argument("--fast-epochs", type=int, nargs="*", default=[3, 6, 14])
    ap.add_argument("--seed-epochs", type=int, nargs="*", default=[4, 10, 20])
    ap.add_argument("--skip-curves", action="store_true", help="keep the accuracy curves of the last results.json")
    args = ap.parse_args()
    from pipeline.core import io

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    prepared = prepared_data(work)
    x, y = io.read_split(prepared, "train")
    xv, yv = io.read_split(prepared, "val")

    bare = bare_seed_cnn(x, y, xv, yv, args.throughput_epochs, 128)
    ours = stage(
        prepared,
        work / "tp",
        model="seed_cnn",
        epochs=args.throughput_epochs,
        batch_size=128,
        learning_rate=1e-3,
        weight_decay=0.0,
        augment={"flip": False, "translate": 0.0},
    )
    ours_ips = ours["images_per_second"]  # same definition as the bare script: train images ÷ median steady epoch

    curves = {}
    if args.skip_curves:
        curves = json.loads((ROOT / "bench/results.json").read_text())["training"]["accuracy_at_budget"]
        args.seed_epochs = args.fast_epochs = []
    for model, budgets in (("seed_cnn", args.seed_epochs), ("fast_net", args.fast_epochs)):
        points = []
        for epochs in budgets:
            extra = {"augment": {"flip": False, "translate": 0.0}, "learning_rate": 1e-3} if model == "seed_cnn" else {}
            m = stage(prepared, work / f"{model}-{epochs}", model=model, epochs=epochs, **extra)
            points.append({"epochs": epochs, "seconds": m["fit_seconds"], "val_accuracy": round(m["val_accuracy"], 4)})
            print(model, points[-1], flush=True)
        curves.setdefault(model, points)
    plot(curves, ROOT / "bench" / "accuracy_vs_time.png")
    save(
        "training",
        {
            "bare_keras_images_per_second": round(bare["images_per_second"], 1),
            "stage_images_per_second": round(ours_ips, 1),
            "stage_over_bare_throughput": round(ours_ips / bare["images_per_second"], 3),
            "accuracy_at_budget": curves,
            "fast_beats_seed_at_every_budget_ge_120s": beats(curves),
            "targets": {"stage_over_bare_throughput": ">= 0.95", "fast_beats_seed_at_every_budget_ge_120s": True},
        },
    )


def best_at(points: list[dict], seconds: float) -> float | None:
    """Best accuracy reachable within `seconds` (a run whose whole schedule fits the budget)."""
    ok = [p["val_accuracy"] for p in points if p["seconds"] <= seconds]
    return max(ok) if ok else None


def beats(curves: dict) -> bool:
    budgets = sorted({p["seconds"] for pts in curves.values() for p in pts if p["seconds"] >= 120})
    result = True
    for t in budgets:
        fast, seed = best_at(curves["fast_net"], t), best_at(curves["seed_cnn"], t)
        if seed is not None and (fast is None or fast <= seed):
            result = False
    return result


def plot(curves: dict, path: Path) -> None:
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for model, points in curves.items():
        ax.plot([p["seconds"] / 60 for p in points], [p["val_accuracy"] for p in points], "o-", label=model)
    ax.axvline(2, color="grey", ls=":", lw=1)
    ax.set_xlabel("training wall time (min, schedule sized to the budget)")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(json.dumps({"plot": str(path)}))


if __name__ == "__main__":
    main()

"""Compression: size ratios, accuracy deltas on the full test split, batch-1 latency and batch-256 throughput
of every variant, from a workspace where `dvc repro` has run (default: the project root).

    python bench/compression.py [--workspace PATH] [--runs 300]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from common import ROOT, paths_of, save
from pipeline.ml.conversion import VARIANTS


def keras_latency_ms(model, one: np.ndarray, runs: int) -> float:
    """Batch-1 latency of the Keras model through its compiled predict path (not eager __call__)."""
    from pipeline.ml.timing import median_latency_ms

    return median_latency_ms(lambda: model.predict_on_batch(one), runs)


def throughput(predict, x: np.ndarray, batch: int = 256, repeats: int = 3) -> float:
    predict(x[:batch])
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(0, len(x), batch):
            predict(x[i : i + batch])
        best = min(best, time.perf_counter() - t)
    return len(x) / best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workspace", type=Path, default=ROOT)
    ap.add_argument("--runs", type=int, default=300)
    args = ap.parse_args()
    import keras

    from pipeline.core import io
    from pipeline.ml.tflite import TFLiteModel

    ws = args.workspace
    paths = paths_of(ws)
    x, y = io.read_split(paths["prepared"], "test")
    x = x.astype(np.float32)
    keras_model = keras.models.load_model(paths["model"])
    keras_acc = float(np.mean(keras_model.predict(x, batch_size=256, verbose=0).argmax(1) == y))
    figures = {
        "keras_fp32": {
            "accuracy": round(keras_acc, 4),
            "latency_ms_batch1": round(keras_latency_ms(keras_model, x[:1], 100), 3),
            "images_per_second_batch256": round(throughput(lambda b: keras_model.predict_on_batch(b), x), 1),
        }
    }
    sizes = {}
    for v in VARIANTS:
        path = paths["compressed"] / f"{v}.tflite"
        sizes[v] = path.stat().st_size
        model = TFLiteModel(path)
        acc = float(np.mean(model.predict(x).argmax(1) == y))
        figures[v] = {
            "bytes": sizes[v],
            "accuracy": round(acc, 4),
            "latency_ms_batch1": round(model.latency_ms(x, args.runs), 4),
            "images_per_second_batch256": round(throughput(lambda b, m=model: m.predict(b, 256), x), 1),
        }
    fp32 = figures["fp32"]
    int8 = figures["int8"]
    save(
        "compression",
        {
            "variants": figures,
            # ratios unrounded: a target is judged on them, and rounding could turn a miss into a pass
            "size_ratio_vs_fp32": {v: sizes["fp32"] / sizes[v] for v in VARIANTS},
            "accuracy_delta_points_vs_fp32_tflite": {
                v: round((figures[v]["accuracy"] - fp32["accuracy"]) * 100, 2) for v in VARIANTS
            },
            "latency_keras_over_int8": figures["keras_fp32"]["latency_ms_batch1"] / int8["latency_ms_batch1"],
            "latency_fp32_tflite_over_int8": fp32["latency_ms_batch1"] / int8["latency_ms_batch1"],
            "targets": {
                "int8_size_ratio": ">= 3.9",
                "fp16_size_ratio": ">= 1.95",
                "int8_accuracy_delta": ">= -0.5",
                "latency_keras_over_int8": ">= 3",
                "latency_fp32_tflite_over_int8": ">= 1.5",
            },
        },
    )


if __name__ == "__main__":
    main()

"""Compress stage: magnitude pruning + fine-tune, then TFLite fp32 / fp16 / dynamic-range / full-int8.

Command: `python -m pipeline.stages.compress` (what dvc.yaml runs) or `mlops compress`.
"""

from __future__ import annotations

import gzip
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from pipeline.core import io
from pipeline.core.command import DEFAULT_PARAMS, ParamsOpt, call, load, path_or
from pipeline.core.config import CompressConfig
from pipeline.ml.conversion import VARIANTS, convert, export_saved_model


def prune(model, cfg: CompressConfig, x: np.ndarray, y: np.ndarray, num_classes: int, seed: int) -> dict:
    """Prune `model` in place to cfg.target_sparsity while fine-tuning; return sparsity figures."""
    import keras

    from pipeline.ml import pruning
    from pipeline.ml.batching import make_batches

    kernels = pruning.prunable_kernels(model)
    if cfg.target_sparsity == 0 or cfg.fine_tune_epochs == 0:
        return {"target_sparsity": 0.0, "achieved_sparsity": pruning.sparsity_of(kernels), "fine_tune_epochs": 0}
    data = make_batches(keras, x, y, num_classes, 128, True, seed)
    end_step = max(1, int(0.7 * cfg.fine_tune_epochs * len(data)))
    model.compile(
        optimizer=keras.optimizers.Adam(cfg.learning_rate),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )
    callback = pruning.pruning_callback(keras, kernels, cfg.target_sparsity, end_step, cfg.pruning_frequency)
    model.fit(data, epochs=cfg.fine_tune_epochs, callbacks=[callback], verbose=1 if sys.stdout.isatty() else 2)
    return {
        "target_sparsity": cfg.target_sparsity,
        "achieved_sparsity": round(pruning.sparsity_of(kernels), 4),
        "fine_tune_epochs": cfg.fine_tune_epochs,
        "pruned_kernels": len(kernels),
    }


def size_info(path: Path) -> dict:
    """Bytes, gzip -9 bytes and sha256 of a .tflite file."""
    data = path.read_bytes()
    return {
        "file": path.name,
        "bytes": len(data),
        "gzip_bytes": len(gzip.compress(data, 9)),
        "sha256": io.sha256_bytes(data),
    }


def run(cfg: CompressConfig, seed: int, data_dir: Path, model_path: Path, out_dir: Path, metrics_path: Path) -> dict:
    """Prune + fine-tune the trained model, then convert it to every TFLite variant.

    Reads: `data_dir/stats.json` and train shards (fine-tuning, int8 calibration), `model_path` (.keras, from
    either backend, any precision).
    Writes: `out_dir/` (pruned.keras and {fp32,fp16,dynamic,int8}.tflite, atomically) and `metrics_path`
    (sparsity, sizes, gzip sizes, size ratios vs fp32).
    """
    import keras

    from pipeline.ml.models import load_float32

    stats = io.read_json(Path(data_dir) / "stats.json")
    x_train, y_train = io.read_split(data_dir, "train")
    keras.utils.set_random_seed(seed)
    model = load_float32(model_path)  # a model trained in mixed precision (GPU) is pruned and converted in float32
    pruning_info = prune(model, cfg, x_train, y_train, len(stats["class_names"]), seed)

    rng = np.random.default_rng(seed)
    representative = x_train[rng.choice(len(x_train), min(cfg.representative_samples, len(x_train)), replace=False)]
    with io.atomic_dir(out_dir) as tmp, tempfile.TemporaryDirectory() as saved:
        model.save(tmp / "pruned.keras")
        export_saved_model(model, Path(saved))
        for variant in VARIANTS:
            (tmp / f"{variant}.tflite").write_bytes(
                convert(Path(saved), variant, representative, per_channel=cfg.int8_per_channel)
            )
            print(f"converted {variant}", flush=True)
        variants = {v: size_info(tmp / f"{v}.tflite") for v in VARIANTS}
    fp32 = variants["fp32"]["bytes"]
    metrics = {
        "pruning": pruning_info,
        "variants": variants,
        "size_ratio_vs_fp32": {v: round(fp32 / info["bytes"], 3) for v, info in variants.items()},
        "gzip_ratio_vs_fp32": {v: round(fp32 / info["gzip_bytes"], 3) for v, info in variants.items()},
    }
    io.write_json(metrics_path, metrics)
    return metrics


def command(
    params: ParamsOpt = DEFAULT_PARAMS,
    data: Annotated[Path | None, typer.Option(help="Prepared shards directory (default: paths.prepared).")] = None,
    model: Annotated[Path | None, typer.Option(help="Trained Keras model (default: paths.model).")] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Directory for the pruned model and .tflite variants (default: paths.compressed)."),
    ] = None,
    metrics: Annotated[
        Path | None, typer.Option(help="Metrics JSON to write (default: paths.compress_metrics).")
    ] = None,
) -> None:
    """Magnitude-prune and fine-tune, then convert to TFLite fp32 / fp16 / dynamic / int8."""
    cfg = load(params)
    paths = cfg.paths
    result = call(
        run,
        cfg.compress,
        seed=cfg.seed,
        data_dir=path_or(data, paths.prepared),
        model_path=path_or(model, paths.model),
        out_dir=path_or(out, paths.compressed),
        metrics_path=path_or(metrics, paths.compress_metrics),
    )
    for name, info in result["variants"].items():
        typer.echo(f"{name:8s} {info['bytes']:>10,d} B  gz {info['gzip_bytes']:>10,d} B")


if __name__ == "__main__":
    typer.run(command)

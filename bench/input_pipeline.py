"""Input pipeline headroom: images/s the data path of default training delivers ÷ images/s the default model
consumes in training steps. Target ≥ 2× on CPU.

The data path is the one the train stage takes by default: `fit_inputs` (pipeline/stages/train.py) turns the
uint8 arrays into float32 images + one-hot labels in memory, and `fit` iterates them through Keras' array adapter
(shuffled batches; on TensorFlow its tf.data dataset). Measured: that conversion (once per fit) and full epochs
of the adapter's batches. The model side: the default model compiled as the stage compiles it (AdamW +
warmup/cosine, one-hot loss), `train_on_batch` on one in-memory batch, so no data cost is counted on that side.

    python bench/input_pipeline.py [--epochs 3] [--steps 60] [--max-per-class N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common import ROOT, prepared_data, save


def _batches(keras, adapter):
    """One epoch of the adapter's batches, as `fit` consumes them on this backend."""
    if keras.backend.backend() == "tensorflow":
        return adapter.get_tf_dataset()
    if keras.backend.backend() == "jax":
        return adapter.get_jax_iterator()
    return adapter.get_numpy_iterator()


def data_rate(keras, inputs: dict, epochs: int) -> list[float]:
    """Seconds of each full epoch through Keras' adapter for the arrays `fit_inputs` returned."""
    from keras.src.trainers.data_adapters import get_data_adapter

    adapter = get_data_adapter(inputs["x"], inputs["y"], batch_size=inputs["batch_size"], shuffle=inputs["shuffle"])
    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        for _batch in _batches(keras, adapter):
            pass
        seconds.append(time.perf_counter() - started)
    return seconds


def model_rate(keras, cfg, stats: dict, inputs: dict, steps: int) -> float:
    """Images/s of training steps of the stage's compiled model on one in-memory batch."""
    from pipeline.stages.train import compiled_model

    model = compiled_model(keras, cfg, stats, len(stats["class_names"]), steps)
    bx, by = inputs["x"][: cfg.batch_size], inputs["y"][: cfg.batch_size]
    model.train_on_batch(bx, by)  # build + compile the step
    started = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(bx, by)
    return steps * len(bx) / (time.perf_counter() - started)


def main() -> None:
    """Measure both rates on the prepared data and save the `input_pipeline` section."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=3, help="epochs through the data path (median taken)")
    ap.add_argument("--steps", type=int, default=60, help="timed training steps of the model")
    ap.add_argument("--max-per-class", type=int, default=None, help="ingest cap (quick trials)")
    args = ap.parse_args()
    import keras

    from pipeline.core import io
    from pipeline.core.config import load_params
    from pipeline.stages.train import fit_inputs

    params = load_params(ROOT / "params.yaml")
    cfg = params.train
    with tempfile.TemporaryDirectory(prefix="bench-input-") as work:
        prepared = prepared_data(Path(work), args.max_per_class)
        stats = io.read_json(prepared / "stats.json")
        x, y = io.read_split(prepared, "train")
        xv, yv = io.read_split(prepared, "val")
    started = time.perf_counter()
    inputs = fit_inputs(keras, x, y, xv, yv, len(stats["class_names"]), cfg.batch_size, params.seed, False)
    prep = time.perf_counter() - started
    if "batch_size" not in inputs:
        raise SystemExit("fit_inputs chose the streaming PyDataset for this data: not the default path measured here")
    epochs = data_rate(keras, inputs, args.epochs)
    data_ips = len(x) / statistics.median(epochs)
    model_ips = model_rate(keras, cfg, stats, inputs, args.steps)
    save(
        "input_pipeline",
        {
            "method": "in-memory arrays, as fit_inputs picks by default (Keras array adapter)",
            "data_path": f"fit_inputs float32 arrays → Keras array adapter ({keras.backend.backend()})",
            "model": cfg.model,
            "train_images": len(x),
            "conversion_seconds_once_per_fit": round(prep, 3),
            "data_epoch_seconds": [round(s, 3) for s in epochs],
            "data_path_images_per_second": round(data_ips, 1),
            "model_images_per_second": round(model_ips, 1),
            "headroom": data_ips / model_ips,  # unrounded, as every judged ratio
            "headroom_first_epoch_with_conversion": len(x) / (prep + epochs[0]) / model_ips,
            "targets": {"headroom": ">= 2 (CPU)"},
        },
    )


if __name__ == "__main__":
    main()

"""Input pipeline headroom: images/s the data path (PyDataset: uint8 shards → float batches) delivers ÷
images/s the default model consumes in training steps. Target ≥ 2× on CPU.

    python bench/input_pipeline.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common import ROOT, save


def main() -> None:
    import keras

    from pipeline.core import io
    from pipeline.core.config import load_params
    from pipeline.ml.batching import make_batches
    from pipeline.ml.models import build_model
    from training import prepared_data

    params = load_params(ROOT / "params.yaml").train
    prepared = prepared_data(Path(tempfile.mkdtemp(prefix="bench-input-")))
    x, y = io.read_split(prepared, "train")
    stats = io.read_json(prepared / "stats.json")
    data = make_batches(keras, x, y, 10, params.batch_size, True, 0)

    started = time.perf_counter()
    for i in range(len(data)):
        data[i]
    data_ips = len(x) / (time.perf_counter() - started)

    model = build_model(
        params.model,
        stats["image_shape"],
        10,
        stats["mean"],
        stats["std"],
        flip=params.augment.flip,
        translate=params.augment.translate,
        width=params.width,
    )
    model.compile("adam", keras.losses.CategoricalCrossentropy(from_logits=True))
    bx, by = data[0]
    model.train_on_batch(bx, by)
    steps = 60
    started = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(bx, by)
    model_ips = steps * len(bx) / (time.perf_counter() - started)
    save(
        "input_pipeline",
        {
            "data_path_images_per_second": round(data_ips, 1),
            "model_images_per_second": round(model_ips, 1),
            "headroom": round(data_ips / model_ips, 2),
            "targets": {"headroom": ">= 2 (CPU)"},
        },
    )


if __name__ == "__main__":
    main()

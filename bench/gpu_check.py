"""GPU check of the training code under KERAS_BACKEND=jax (no TensorFlow needed): images/s, time to a target
validation accuracy, estimated FLOP utilisation, mixed precision on. Also runs on CPU (for a dry run).

    KERAS_BACKEND=jax python bench/gpu_check.py --data bench/gpu_payload/fashion.npz
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np

PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}  # dense bf16/fp16 tensor-core peaks


def forward_flops(model) -> float:
    """Multiply-adds ×2 of Conv2D and Dense layers for one image."""
    import keras

    total = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, cout = layer.output.shape
            kh, kw, cin, _ = layer.kernel.shape
            total += 2.0 * h * w * kh * kw * cin * cout
        elif isinstance(layer, keras.layers.Dense):
            cin, cout = layer.kernel.shape
            total += 2.0 * cin * cout
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True, help="npz with x_train, y_train, x_val, y_val (uint8 NHWC)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--target", type=float, default=0.92)
    ap.add_argument("--gpu", default="H200")
    args = ap.parse_args()
    import keras

    from pipeline.ml.batching import make_batches
    from pipeline.ml.models import build_model
    from pipeline.ml.runtime import configure_precision, describe

    data = np.load(args.data)
    x, y, xv, yv = data["x_train"], data["y_train"], data["x_val"], data["y_val"]
    policy = configure_precision("auto")
    mean = [float(x.mean())]
    std = [float(x.std())]
    model = build_model("fast_net", x.shape[1:], 10, mean, std, flip=True, translate=0.1, width=args.width)
    steps = args.epochs * -(-len(x) // args.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, steps - steps // 10, warmup_target=3e-3 * args.batch_size / 128, warmup_steps=steps // 10, alpha=0.01
    )
    model.compile(
        keras.optimizers.AdamW(schedule, weight_decay=5e-4),
        keras.losses.CategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=True,
    )
    train = make_batches(keras, x, y, 10, args.batch_size, True, 0)
    val = make_batches(keras, xv, yv, 10, 1024, False, 0)
    log = []

    class Timer(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.start = time.perf_counter()

        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            log.append(
                {
                    "epoch": epoch + 1,
                    "seconds": time.perf_counter() - self.t,
                    "elapsed": time.perf_counter() - self.start,
                    "val_accuracy": float(logs["val_accuracy"]),
                }
            )
            print(json.dumps(log[-1]), flush=True)

    model.fit(train, validation_data=val, epochs=args.epochs, verbose=0, callbacks=[Timer()])
    steady = [e["seconds"] for e in log[1:]] or [log[0]["seconds"]]
    ips = len(x) / float(np.median(steady))
    reached = next((e["elapsed"] for e in log if e["val_accuracy"] >= args.target), None)
    flops = 3 * forward_flops(model)  # forward + backward ≈ 3× forward
    peak = PEAK_TFLOPS.get(args.gpu, 989.0) * 1e12
    print(
        json.dumps(
            {
                "gpu_check": {
                    **describe(),
                    "dtype_policy": policy,
                    "images_per_second": round(ips, 1),
                    "epoch_seconds_median": round(float(np.median(steady)), 3),
                    f"seconds_to_val_accuracy_{args.target}": reached,
                    "final_val_accuracy": log[-1]["val_accuracy"],
                    "train_gflop_per_image": round(flops / 1e9, 4),
                    "estimated_flop_utilisation": round(flops * ips / peak, 5),
                }
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

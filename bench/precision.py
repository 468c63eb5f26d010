"""Mixed precision on the CPU: training step time of the stage's models under float32 vs mixed_bfloat16 (TensorFlow).

    python bench/precision.py [--runs 3] [--steps 40] [--models fast_net seed_cnn]

Each run is a fresh process that builds and compiles the model exactly as the train stage does (same builder,
AdamW + warmup/cosine, one-hot loss; `pipeline.stages.train.compiled_model`) under the given Keras dtype policy,
fits one warm-up pass, then times `--steps` training steps of batch 128 on Fashion-MNIST-shaped data. Runs alternate
float32 / bfloat16, `--runs` of each; min and median step time per side and the ratio of medians are reported.
It decides whether mixed_bfloat16 is worth offering as the CPU default (`train.precision`); float32 stays the default
while it shows no gain.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import save, tool_env

CHILD = r"""
import json, sys, time
import numpy as np
policy, model_name, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
from pipeline.ml import accelerator
accelerator.activate(accelerator.plan("tensorflow", "cpu", ()))
import keras
from pipeline.core.config import TrainConfig
from pipeline.ml import runtime
from pipeline.stages.train import compiled_model
runtime.configure_precision(policy)
keras.utils.set_random_seed(0)
cfg = TrainConfig(model=model_name)
stats = {"image_shape": [28, 28, 1], "mean": [72.9], "std": [90.0]}
model = compiled_model(keras, cfg, stats, 10, 10_000)
rng = np.random.default_rng(0)
x = rng.integers(0, 256, size=(128 * steps, 28, 28, 1)).astype("float32")
y = np.eye(10, dtype="float32")[rng.integers(0, 10, size=len(x))]
model.fit(x[: 128 * 5], y[: 128 * 5], batch_size=128, epochs=1, verbose=0)
started = time.perf_counter()
model.fit(x, y, batch_size=128, epochs=1, verbose=0, shuffle=False)
print(json.dumps({"step_seconds": (time.perf_counter() - started) / steps}))
"""
POLICIES = ("float32", "mixed_bfloat16")


def one_run(policy: str, model: str, steps: int) -> float:
    """Step seconds of one fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, policy, model, str(steps)],
        env=tool_env({"KERAS_BACKEND": "tensorflow"}),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(json.loads(out.strip().splitlines()[-1])["step_seconds"])


def summary(values: list[float]) -> dict:
    """Every run, min and median."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return {"runs": [round(v, 5) for v in values], "min": round(ordered[0], 5), "median": round(median, 5)}


def main() -> None:
    """Alternate float32 / bfloat16 runs per model; save section 'precision'."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--models", nargs="*", default=["fast_net", "seed_cnn"])
    args = ap.parse_args()
    models = {}
    for model in args.models:
        times: dict[str, list[float]] = {p: [] for p in POLICIES}
        for _ in range(args.runs):
            for policy in POLICIES:
                times[policy].append(one_run(policy, model, args.steps))
                print(model, policy, round(times[policy][-1], 4), flush=True)
        sides = {p: summary(v) for p, v in times.items()}
        models[model] = {
            **sides,
            "float32_over_bfloat16_median_step_time": round(
                sides["float32"]["median"] / sides["mixed_bfloat16"]["median"], 3
            ),
        }
    save(
        "precision",
        {
            "command": f"python bench/precision.py --runs {args.runs} --steps {args.steps} --models "
            + " ".join(args.models),
            "measured": "training step seconds, batch 128, TensorFlow on the CPU; runs alternate float32/bfloat16",
            "cpu_bf16_flags": cpu_bf16_flags(),
            "models": models,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )


def cpu_bf16_flags() -> list[str]:
    """The CPU's native bfloat16 instruction flags (/proc/cpuinfo): what oneDNN can use for mixed_bfloat16."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f in ("avx512_bf16", "amx_bf16", "avx_ne_convert"))


if __name__ == "__main__":
    main()

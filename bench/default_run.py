"""The default run's figures, collected from a workspace after `make run` (nothing is re-measured here):
metrics/train.json, metrics/compress.json, metrics/evaluate.json and reports/registration.json (paths from the
workspace's params.yaml), and the wall time `make run` recorded in .cache/make_run.json.

    python bench/default_run.py [--workspace PATH]     # default: the project root
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

from common import ROOT, paths_of, save

MAKE_RUN_CLOCK = Path(".cache/make_run.json")  # written by the Makefile's `run` target
VARIANTS = ("fp32", "fp16", "dynamic", "int8")


def _read(path: Path) -> dict:
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run `make run` in the workspace first")
    return json.loads(path.read_text())


def _commit(workspace: Path) -> str | None:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=workspace, capture_output=True, text=True)
    return out.stdout.strip() or None


def training(train: dict) -> dict:
    """What trained, where, how long and how well (validation)."""
    keys = ("model", "params", "epochs", "train_samples", "val_accuracy", "best_val_accuracy", "fit_seconds")
    return {
        **{k: train.get(k) for k in keys},
        "images_per_second": train.get("images_per_second"),
        "backend": train.get("backend"),
        "device": train.get("device", "gpu" if train.get("gpus") else "cpu"),
        "precision": train.get("precision", train.get("dtype_policy")),
        "cpus": train.get("cpus"),
    }


def variants(compress: dict, evaluate: dict) -> dict:
    """Per .tflite variant: test accuracy, bytes, gzip bytes, exact size ratio vs fp32, batch-1 latency."""
    fp32 = compress["variants"]["fp32"]["bytes"]
    scored = evaluate["variants"]
    out = {}
    for v in VARIANTS:
        size = compress["variants"][v]
        out[v] = {
            "test_accuracy": scored[v]["accuracy"],
            "accuracy_delta_points_vs_fp32": round((scored[v]["accuracy"] - scored["fp32"]["accuracy"]) * 100, 4),
            "bytes": size["bytes"],
            "gzip_bytes": size.get("gzip_bytes"),
            "size_ratio_vs_fp32": fp32 / size["bytes"],
            "latency_ms_batch1": scored[v]["latency_ms_batch1"],
        }
    return out


def make_run_clock(workspace: Path) -> dict:
    """`make run`'s own wall time, or why there is none."""
    path = workspace / MAKE_RUN_CLOCK
    if not path.is_file():
        return {"measured": False, "why": f"no {MAKE_RUN_CLOCK}: this workspace's run did not go through `make run`"}
    return {"measured": True, **json.loads(path.read_text())}


def collect(workspace: Path) -> dict:
    """The `default_run` section for `workspace`."""
    paths = paths_of(workspace)
    train = _read(paths["train_metrics"])
    evaluate = _read(paths["evaluate_metrics"])
    record = paths["registration"]
    logging = json.loads(record.read_text()).get("logging_seconds") if record.is_file() else None
    keras = evaluate["variants"]
    return {
        "workspace_commit": _commit(workspace),
        "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(paths["evaluate_metrics"].stat().st_mtime)),
        "make_run": make_run_clock(workspace),
        "training": training(train),
        "deploy_variant": evaluate["deploy_variant"],
        "blessed": evaluate.get("blessed"),
        "test_samples": evaluate.get("test_samples"),
        "keras_test_accuracy": keras.get("keras", {}).get("accuracy"),
        "keras_pruned_test_accuracy": keras.get("keras_pruned", {}).get("accuracy"),
        "keras_latency_ms_batch1": keras.get("keras", {}).get("latency_ms_batch1"),
        "variants": variants(_read(paths["compress_metrics"]), evaluate),
        "mlflow_logging_s": logging,
        "mlflow_logging_over_training": logging / train["fit_seconds"] if logging is not None else None,
        "targets": {
            "variants.int8.size_ratio_vs_fp32": ">= 3.9",
            "variants.fp16.size_ratio_vs_fp32": ">= 1.95",
            "variants.int8.accuracy_delta_points_vs_fp32": ">= -0.5",
            "mlflow_logging_over_training": "<= 0.01",
        },
    }


def main() -> None:
    """Collect and save the `default_run` section."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", type=Path, default=ROOT)
    args = ap.parse_args()
    save("default_run", collect(args.workspace.resolve()))


if __name__ == "__main__":
    main()

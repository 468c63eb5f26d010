#!/usr/bin/env bash
# GPU check through the real train stage (`python -m pipeline.stages.train`, what `mlops train` and dvc.yaml run):
# the same prepared data, model, backend and epochs trained on the GPU (train.device: gpu) and on the CPU
# (train.device: cpu), GPU_CHECK_RUNS (default 3) pairs alternating; precision is each device's `auto` (mixed on
# the GPU, float32 on the CPU). Prints min/median images/s, val accuracy and the median speed-up, and stores them
# in bench/results.json as "gpu_check".
#
#   bash bench/gpu_check.sh [EPOCHS] [SAMPLES]          # a machine with the project installed: make setup GPU=1
#   bash bench/gpu_check.sh prepare [SAMPLES]           # here: pure-Python wheels + a prepared subset, for a
#   bash bench/gpu_check.sh device [EPOCHS] [SAMPLES]   #   machine with JAX (CUDA) and no TensorFlow or network
set -euo pipefail
cd "$(dirname "$0")/.."
PAYLOAD=bench/gpu_payload
ARGS="$*"
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python

train() {  # train BACKEND DEVICE EPOCHS SAMPLES DATA OUT: one run of the train stage, its metrics in OUT/train.json
  local backend=$1 device=$2 epochs=$3 samples=$4 data=$5 out=$6
  mkdir -p "$out"
  printf 'train:\n  backend: %s\n  device: %s\n  epochs: %s\n  max_train_samples: %s\n' \
    "$backend" "$device" "$epochs" "$samples" >"$out/params.yaml"
  "$PY" -m pipeline.stages.train --params "$out/params.yaml" --data "$data" --model "$out/model.keras" \
    --metrics "$out/train.json" --plots "$out/plots" --backup "$out/backup"
}

compare() {  # compare EPOCHS SAMPLES DATA: GPU_CHECK_RUNS (3) GPU/CPU pairs, alternating, then min and median
  local epochs=$1 samples=$2 data=$3 runs backend gpu_device=gpu i
  runs=$(mktemp -d)
  # GPU_CHECK_DRY_RUN=1: the "GPU" runs on the CPU too, to check this script on a machine without a GPU
  [ "${GPU_CHECK_DRY_RUN:-0}" = 1 ] && gpu_device=cpu
  for i in $(seq 1 "${GPU_CHECK_RUNS:-3}"); do
    train "${GPU_CHECK_BACKEND:-auto}" "$gpu_device" "$epochs" "$samples" "$data" "$runs/gpu$i"
    # the CPU baseline does the same work on the backend the GPU run used (only precision follows the device)
    backend=$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['backend'])" "$runs/gpu$i/train.json")
    train "$backend" cpu "$epochs" "$samples" "$data" "$runs/cpu$i"
  done
  "$PY" - "$runs" "$ARGS" <<'PY'
import json, statistics, sys
from pathlib import Path

runs = Path(sys.argv[1])
side = {d: [json.loads(p.read_text()) for p in sorted(runs.glob(f"{d}*/train.json"))] for d in ("gpu", "cpu")}
keys = ("backend", "device_name", "precision", "strategy")


def summary(metrics: list[dict]) -> dict:
    rates = [m["images_per_second"] for m in metrics]
    return {**{k: metrics[0][k] for k in keys}, "images_per_second_min": min(rates),
            "images_per_second_median": round(statistics.median(rates), 1), "val_accuracy": [m["val_accuracy"] for m in metrics]}


gpu, cpu = summary(side["gpu"]), summary(side["cpu"])
result = {
    "gpu": gpu, "cpu": cpu, "runs": len(side["gpu"]),
    "epochs": side["gpu"][0]["epochs"], "train_samples": side["gpu"][0]["train_samples"],
    "speedup_median_images_per_second": round(gpu["images_per_second_median"] / cpu["images_per_second_median"], 2),
    "command": f"bash bench/gpu_check.sh {sys.argv[2]}".strip(),
}
print(json.dumps(result, indent=2))
path = Path("bench/results.json")
if path.is_file():
    merged = json.loads(path.read_text())
    merged["gpu_check"] = result
    path.write_text(json.dumps(merged, indent=2) + "\n")
PY
}

case "${1:-}" in
  prepare)  # wheels for Python 3.12 (what the lent machine runs) and the first SAMPLES prepared train images
    samples=${2:-20000}
    rm -rf "$PAYLOAD" && mkdir -p "$PAYLOAD/wheels"
    .venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$PAYLOAD/wheels" keras==3.15.1 namex optree ml_dtypes h5py rich absl-py markdown-it-py mdurl pygments \
      pydantic==2.14.4 pydantic_core typing_inspection annotated_types typing_extensions PyYAML==6.0.4 \
      typer==0.29.2 click shellingham matplotlib contourpy cycler fonttools kiwisolver pillow pyparsing \
      python-dateutil six packaging
    .venv/bin/python - "$samples" <<'PY'
import shutil, sys
from pathlib import Path
from pipeline.core import io
from pipeline.core.config import load_params

src, dst, n = Path(load_params("params.yaml").paths.prepared), Path("bench/gpu_payload/prepared"), int(sys.argv[1])
dst.mkdir(parents=True)
for split in ("train", "val"):
    x, y = io.read_split(src, split)
    io.write_shards(dst, split, x[:n] if split == "train" else x, y[:n] if split == "train" else y, 20000)
shutil.copy(src / "stats.json", dst / "stats.json")
PY
    du -sh "$PAYLOAD" ;;
  device)  # on the lent machine: install only from the carried wheels, then compare
    "$PY" -c "import jax; print(jax.devices())"
    "$PY" -m pip install -q --no-index --find-links "$PAYLOAD/wheels" keras pydantic PyYAML typer matplotlib
    GPU_CHECK_BACKEND=jax compare "${2:-5}" "${3:-20000}" "$PAYLOAD/prepared" ;;
  *)
    data=$("$PY" -c "from pipeline.core.config import load_params; print(load_params('params.yaml').paths.prepared)")
    [ -f "$data/stats.json" ] || { echo "no prepared data in $data: run \`dvc repro preprocess\` first" >&2; exit 2; }
    compare "${1:-5}" "${2:-20000}" "$data" ;;
esac

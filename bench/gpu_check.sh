#!/usr/bin/env bash
# GPU check through the real train stage (`python -m pipeline.stages.train`, what `mlops train` and dvc.yaml run):
# the same prepared data, model and epochs trained twice, once on the GPU (train.device: gpu) and once on the CPU
# (train.device: cpu), with the stage's own backend/precision choice; prints images/s, val accuracy and the
# speed-up, and appends them to bench/results.json as "gpu_check".
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

train() {  # train DEVICE EPOCHS SAMPLES DATA OUT: one run of the train stage, its metrics in OUT/train.json
  local device=$1 epochs=$2 samples=$3 data=$4 out=$5
  mkdir -p "$out"
  printf 'train:\n  backend: %s\n  device: %s\n  epochs: %s\n  max_train_samples: %s\n' \
    "${GPU_CHECK_BACKEND:-auto}" "$device" "$epochs" "$samples" >"$out/params.yaml"
  "$PY" -m pipeline.stages.train --params "$out/params.yaml" --data "$data" --model "$out/model.keras" \
    --metrics "$out/train.json" --plots "$out/plots" --backup "$out/backup"
}

compare() {  # compare EPOCHS SAMPLES DATA: GPU run, CPU run, then the figures
  local epochs=$1 samples=$2 data=$3 runs
  runs=$(mktemp -d)
  # GPU_CHECK_DRY_RUN=1: both runs on the CPU, to check this script on a machine without a GPU
  train "$([ "${GPU_CHECK_DRY_RUN:-0}" = 1 ] && echo cpu || echo gpu)" "$epochs" "$samples" "$data" "$runs/gpu"
  train cpu "$epochs" "$samples" "$data" "$runs/cpu"
  "$PY" - "$runs" "$ARGS" <<'PY'
import json, sys
from pathlib import Path

runs = Path(sys.argv[1])
gpu, cpu = (json.loads((runs / d / "train.json").read_text()) for d in ("gpu", "cpu"))
keys = ("backend", "device_name", "precision", "strategy", "images_per_second", "val_accuracy", "fit_seconds")
result = {
    "gpu": {k: gpu[k] for k in keys}, "cpu": {k: cpu[k] for k in keys},
    "epochs": gpu["epochs"], "train_samples": gpu["train_samples"],
    "speedup_images_per_second": round(gpu["images_per_second"] / cpu["images_per_second"], 2),
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

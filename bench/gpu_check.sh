#!/usr/bin/env bash
# One short, prepared GPU check for a machine without TensorFlow (e.g. an H200 with JAX).
#   here:   bash bench/gpu_check.sh prepare     # keras wheel + a data shard into bench/gpu_payload/ (git-ignored)
#   there:  bash bench/gpu_check.sh run         # KERAS_BACKEND=jax, mixed precision, prints the figures as JSON
set -euo pipefail
cd "$(dirname "$0")/.."
PAYLOAD=bench/gpu_payload
case "${1:-run}" in
  prepare)
    mkdir -p "$PAYLOAD"
    .venv/bin/pip download -q --no-deps -d "$PAYLOAD" keras==3.15.1 namex optree ml_dtypes h5py rich absl-py \
      pydantic==2.14.4 pydantic_core==2.50.5 typing_inspection annotated_types PyYAML==6.0.4 markdown-it-py mdurl pygments
    .venv/bin/python - <<'PY'
import numpy as np
from pipeline.core import io
from pipeline.core.config import load_params
prepared = load_params("params.yaml").paths.prepared
x, y = io.read_split(prepared, "train")
xv, yv = io.read_split(prepared, "val")
np.savez_compressed("bench/gpu_payload/fashion.npz", x_train=x, y_train=y, x_val=xv, y_val=yv)
PY
    du -sh "$PAYLOAD" ;;
  run)
    python -c "import jax; print(jax.devices())"
    for mod in keras pydantic yaml; do   # the device has no network: install only from the carried wheels
      python -c "import $mod" 2>/dev/null || pip install -q --no-index --find-links "$PAYLOAD" "$( [ $mod = yaml ] && echo PyYAML || echo $mod )"
    done
    KERAS_BACKEND=jax timeout 540 python bench/gpu_check.py --data "$PAYLOAD/fashion.npz" "${@:2}" ;;
  *) echo "usage: $0 prepare|run [gpu_check.py options]" >&2; exit 2 ;;
esac

"""Scaling: wall time and peak RSS of ingest, validate and one training epoch at 25/50/100 % of the data, and
ingest of a 60,000-file image folder. Each step runs as its own process (`os.wait4` gives its peak RSS).

    python bench/scaling.py [--fractions 0.25 0.5 1.0] [--folder-images 60000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from common import ROOT, make_project, save, tool_env

FULL_PER_CLASS = 6000


def measure(cmd: list[str], cwd: Path) -> dict:
    """Seconds and peak RSS (MB) of one command."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-2000:]}")
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def slope(xs, ys) -> float:
    """Least-squares slope (seconds per 1,000 images)."""
    return float(np.polyfit(np.asarray(xs) / 1000, ys, 1)[0])


def write_folder(root: Path, n: int) -> Path:
    from PIL import Image

    from pipeline.data.idx import read_fashion_mnist

    raw = read_fashion_mnist(str(ROOT / "data/raw/fashion-mnist"), None, root / "cache")  # `make dataset`
    for i in range(n):
        label = int(raw.train_y[i])
        folder = root / "images" / "train" / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(raw.train_x[i, :, :, 0]).save(folder / f"{i:05d}.png")
    return root / "images"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fractions", type=float, nargs="*", default=[0.25, 0.5, 1.0])
    ap.add_argument("--folder-images", type=int, default=60000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    rows = []
    for fraction in args.fractions:
        per_class = None if fraction >= 1 else int(FULL_PER_CLASS * fraction)
        work = make_project(tmp / f"f{fraction}", {"ingest": {"max_per_class": per_class}, "train": {"epochs": 1}})
        row = {"fraction": fraction, "images": int(70000 * fraction)}
        row["ingest"] = measure(["mlops", "ingest"], work)
        row["validate"] = measure(["mlops", "validate"], work)
        measure(["mlops", "preprocess"], work)
        row["train_1_epoch"] = measure(["mlops", "train"], work)
        rows.append(row)
        print(row, flush=True)
    images = [r["images"] for r in rows]
    folder = write_folder(tmp / "folder", args.folder_images)
    work = make_project(
        tmp / "folder-project",
        {"ingest": {"dataset": "image-folder", "source": str(folder), "image_size": [28, 28], "channels": 1}},
    )
    folder_ingest = measure(["mlops", "ingest"], work)
    save(
        "scaling",
        {
            "rows": rows,
            "slope_s_per_1000_images": {
                step: round(slope(images, [r[step]["seconds"] for r in rows]), 3)
                for step in ("ingest", "validate", "train_1_epoch")
            },
            "image_folder_ingest": {"files": args.folder_images, **folder_ingest},
            "train_peak_rss_mb_full": rows[-1]["train_1_epoch"]["peak_rss_mb"],
            "targets": {"growth": "linear (see slope and rows)", "train_peak_rss_mb_full": "<= 2560"},
        },
    )


if __name__ == "__main__":
    main()

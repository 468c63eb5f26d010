"""Preprocess stage: convert the validated shards to the model's channel layout and record normalisation stats.

Images stay uint8 NHWC (4x smaller than float32 on disk and in memory); the model normalises inside its graph with
the per-channel mean/std written to stats.json (pixel units, 0-255, computed over the train split only).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from pipeline import io
from pipeline.config import PreprocessConfig
from pipeline.errors import StageError

SPLITS = ("train", "val", "test", "stream")
OPTIONAL_SPLITS = ("stream",)
SHARD_SIZE = 20_000
LUMINANCE = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 luma weights
_CHUNK = 4096  # images per block for float/int64 temporaries


def convert_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """Return uint8 NHWC images with `channels` channels (1->3 repeats grey; 3->1 is rounded BT.601 luminance).

    A 3-D (N, H, W) array is read as single-channel.
    """
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4:
        raise ValueError(f"expected images shaped (N, H, W, C), got {x.shape}")
    if x.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {x.dtype} (run `mlops validate` first)")
    have = x.shape[-1]
    if have == channels:
        return x
    if have == 1 and channels == 3:
        return np.repeat(x, 3, axis=-1)
    if have == 3 and channels == 1:
        out = np.empty((*x.shape[:-1], 1), dtype=np.uint8)
        for start in range(0, len(x), _CHUNK):
            block = x[start:start + _CHUNK].astype(np.float64) @ LUMINANCE
            out[start:start + _CHUNK, ..., 0] = np.clip(np.rint(block), 0, 255).astype(np.uint8)
        return out
    raise ValueError(f"cannot convert {have}-channel images to {channels} channels (supported: 1 <-> 3)")


def channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and population std of uint8 NHWC images, in pixel units (exact integer accumulation)."""
    if len(x) == 0:
        raise ValueError("cannot compute statistics of an empty split")
    c = x.shape[-1]
    total = np.zeros(c, dtype=np.int64)
    total_sq = np.zeros(c, dtype=np.int64)
    for start in range(0, len(x), _CHUNK):
        block = x[start:start + _CHUNK].reshape(-1, c).astype(np.int64)
        total += block.sum(axis=0)
        total_sq += (block * block).sum(axis=0)
    n = x.size // c
    mean = total / n
    var = np.maximum(total_sq / n - mean**2, 0.0)
    return [float(v) for v in mean], [float(v) for v in np.sqrt(var)]


def run(cfg: PreprocessConfig, data_dir: str | Path, out_dir: str | Path) -> dict:
    """Convert every split of `data_dir` into `out_dir` (atomically) with stats.json and a copy of manifest.json."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    manifest = io.read_json(data_dir / "manifest.json")

    splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in SPLITS:
        try:
            x, y = io.read_split(data_dir, split)
        except FileNotFoundError:
            if split in OPTIONAL_SPLITS:
                continue
            raise
        try:
            splits[split] = (convert_channels(x, cfg.channels), y)
        except ValueError as exc:
            raise StageError(f"{data_dir}: split {split!r}: {exc}") from exc

    x_train = splits["train"][0]
    if len(x_train) == 0:
        raise StageError(f"{data_dir}: the train split is empty; re-run `mlops ingest` / check `mlops validate`.")
    image_shape = [int(d) for d in x_train.shape[1:]]
    for split, (x, _) in splits.items():
        if list(x.shape[1:]) != image_shape:
            raise StageError(f"{data_dir}: split {split!r} has images {list(x.shape[1:])}, train has {image_shape}; "
                             "run `mlops validate` to find the bad rows.")
    mean, std = channel_stats(x_train)

    stats = {
        "image_shape": image_shape,
        "mean": mean,
        "std": std,
        "class_names": list(manifest.get("class_names", [])),
        "counts": {split: int(len(x)) for split, (x, _) in splits.items()},
        "source_checksum": manifest.get("checksum"),
        "dtype": "uint8",
        "shards": {},
    }
    with io.atomic_dir(out_dir) as tmp:
        for split, (x, y) in splits.items():
            stats["shards"][split] = io.write_shards(tmp, split, x, y, shard_size=SHARD_SIZE, compress=False)
        shutil.copy2(data_dir / "manifest.json", tmp / "manifest.json")
        io.write_json(tmp / "stats.json", stats)
    return stats

"""Reusable test helpers (import as `from tests.helpers import ...`).

`write_ingested` writes a directory in the same layout as the ingest stage's output: `{split}-00000.npz` shards
(via pipeline.io.write_shards) plus a manifest.json with the ingest schema, so stage tests need no real dataset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core import io
from pipeline.stages.ingest import manifest_checksum

SPLITS = ("train", "val", "test", "stream")


def write_ingested(
    directory: str | Path,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    class_names: list[str],
    *,
    image_shape: tuple[int, int, int] | None = None,
    dataset: str = "fixture",
    seed: int = 0,
    shard_size: int = 100_000,
) -> Path:
    """Write `splits` ({split: (x, y)}) as ingest-style shards + manifest.json under `directory`; return it.

    Splits of SPLITS that are not given are written empty (shape (0, *image_shape)), like an empty stream split.
    `image_shape` defaults to the train images' shape (what the manifest promises; pass it to make a split lie).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if image_shape is None:
        ref = splits.get("train", next(iter(splits.values())))[0]
        image_shape = tuple(int(d) for d in ref.shape[1:])
        if len(image_shape) == 2:
            image_shape = (*image_shape, 1)
    n_classes = len(class_names)
    manifest_splits = {}
    for split in dict.fromkeys([*SPLITS, *splits]):
        if split in splits:
            x, y = splits[split]
        else:
            x, y = np.zeros((0, *image_shape), np.uint8), np.zeros((0,), np.uint8)
        x, y = np.asarray(x), np.asarray(y)
        shards = io.write_shards(directory, split, x, y, shard_size=shard_size)
        class_counts = np.bincount(y.astype(np.int64).clip(0), minlength=n_classes).tolist() if len(y) else [0] * n_classes
        manifest_splits[split] = {"count": int(len(x)), "class_counts": class_counts, "shards": shards}
    checksum = manifest_checksum(manifest_splits)
    manifest = {
        "dataset": dataset,
        "class_names": list(class_names),
        "image_shape": list(image_shape),
        "seed": seed,
        "splits": manifest_splits,
        "sources": {"fixture": checksum},
        "duplicates_dropped": {split: 0 for split in manifest_splits},
        "checksum": checksum,
    }
    io.write_json(directory / "manifest.json", manifest)
    return directory


def make_images(
    n_per_class: int,
    n_classes: int = 3,
    shape: tuple[int, int, int] = (8, 8, 1),
    seed: int = 0,
    dtype=np.uint8,
) -> tuple[np.ndarray, np.ndarray]:
    """Random, unique, mid-grey-ish images with balanced labels (every class `n_per_class` times)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes, dtype=np.uint8), n_per_class)
    x = rng.integers(20, 236, size=(len(y), *shape)).astype(dtype)
    return x, y


def good_splits(n_classes: int = 3, shape: tuple[int, int, int] = (8, 8, 1)) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A small, valid, leak-free train/val/test/stream set (distinct seeds keep images unique across splits)."""
    return {
        "train": make_images(20, n_classes, shape, seed=1),
        "val": make_images(6, n_classes, shape, seed=2),
        "test": make_images(6, n_classes, shape, seed=3),
        "stream": make_images(4, n_classes, shape, seed=4),
    }


def fake_nvidia_smi(bin_dir: Path, gpus: tuple[str, ...] = ("NVIDIA H200",)) -> Path:
    """An `nvidia-smi` on `bin_dir` whose `-L` lists `gpus`, as on a GPU machine (put bin_dir first on PATH)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    lines = "".join(f'echo "GPU {i}: {name} (UUID: GPU-{i:08d}-fake)"\n' for i, name in enumerate(gpus))
    script = bin_dir / "nvidia-smi"
    script.write_text(f'#!/bin/sh\n[ "$1" = "-L" ] || exit 9\n{lines}')
    script.chmod(0o755)
    return script

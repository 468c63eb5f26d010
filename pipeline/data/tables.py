"""The small pandas tables that data validation checks.

They summarise the ingested shards (vectorised numpy, a sha1 per image):

* ``images``  - one row per image: shape, dtype, pixel statistics, non-finite flag, content hash, leakage flag;
* ``classes`` - one row per (split, class): count, fraction and ratio to the uniform fraction (balance);
* ``splits``  - one row per required split: image count and the count the manifest claims.

Every table has a ``row_id`` column, which GX reports for unexpected rows (see pipeline/data/report.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core import io
from pipeline.core.errors import StageError
from pipeline.core.splits import REQUIRED_SPLITS, SPLITS
from pipeline.data.images import image_hashes

_CHUNK = 8192  # images per vectorised block: bounds float64 temporaries to ~50 MB for 28x28x1

IMAGE_COLUMNS = {
    "row_id": np.int64,
    "split": str,
    "index": np.int64,
    "label": np.int64,
    "height": np.int64,
    "width": np.int64,
    "channels": np.int64,
    "dtype": str,
    "mean": float,
    "std": float,
    "min": float,
    "max": float,
    "non_finite": bool,
    "hash": str,
    "cross_split_duplicate": bool,
}
CLASS_COLUMNS = ["split", "label", "class_name", "count", "fraction", "ratio_to_uniform"]


def read_manifest(data_dir: str | Path) -> dict:
    """`data_dir/manifest.json`, checked for the keys validation needs; StageError naming what is wrong."""
    data_dir = Path(data_dir)
    manifest = io.read_json(data_dir / "manifest.json")
    for key in ("class_names", "image_shape", "splits"):
        if key not in manifest:
            raise StageError(f"{data_dir / 'manifest.json'}: missing key {key!r}; re-run `mlops ingest`.")
    if len(manifest["image_shape"]) != 3:
        raise StageError(f"{data_dir / 'manifest.json'}: image_shape must be [H, W, C], got {manifest['image_shape']}")
    return manifest


def _iter_shards(data_dir: Path, split: str) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Yield (file name, x, y) per shard of `split` (same layout read_split concatenates).

    Shards are read one at a time rather than through io.read_split so that a shard with a different image shape
    (which np.concatenate would reject) still becomes table rows that the shape expectations can point at.
    """
    for path in sorted(data_dir.glob(f"{split}-*.npz")):
        try:
            with np.load(path, allow_pickle=False) as data:
                x, y = data["x"], data["y"]
        except (OSError, ValueError, KeyError) as exc:
            raise StageError(f"{path}: unreadable shard ({exc}); re-run `mlops ingest`.") from exc
        if len(x) != len(y):
            raise StageError(f"{path}: x has {len(x)} images but y has {len(y)} labels; re-run `mlops ingest`.")
        yield path.name, x, y


def _image_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image mean/std/min/max (over finite values) and a non-finite flag, vectorised in blocks."""
    n = len(x)
    flat = x.reshape(n, -1) if n else x.reshape(0, 0)
    out = {k: np.full(n, np.nan) for k in ("mean", "std", "min", "max")}
    out["non_finite"] = np.zeros(n, dtype=bool)
    if n == 0 or flat.shape[1] == 0:
        return out
    is_float = np.issubdtype(flat.dtype, np.floating) or np.issubdtype(flat.dtype, np.complexfloating)
    for start in range(0, n, _CHUNK):
        sl = slice(start, start + _CHUNK)
        block = flat[sl].astype(np.float64)
        if is_float:
            finite = np.isfinite(block)
            out["non_finite"][sl] = ~finite.all(axis=1)
            if not finite.all():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows -> NaN stats, flagged anyway
                    masked = np.where(finite, block, np.nan)
                    out["mean"][sl] = np.nanmean(masked, axis=1)
                    out["std"][sl] = np.nanstd(masked, axis=1)
                    out["min"][sl] = np.nanmin(masked, axis=1)
                    out["max"][sl] = np.nanmax(masked, axis=1)
                continue
        out["mean"][sl] = block.mean(axis=1)
        out["std"][sl] = block.std(axis=1)
        out["min"][sl] = block.min(axis=1)
        out["max"][sl] = block.max(axis=1)
    return out


def _shape_columns(x: np.ndarray) -> tuple[int, int, int]:
    """(height, width, channels) of an NHWC array; a missing channel axis reads as channels=0, so it fails."""
    dims = list(x.shape[1:]) + [0] * max(0, 3 - (x.ndim - 1))
    if x.ndim - 1 > 3:  # extra axes: fold them into channels so the shape check flags it
        dims = [dims[0], dims[1], int(np.prod(dims[2:]))]
    return int(dims[0]), int(dims[1]), int(dims[2])


def image_rows(x: np.ndarray, y: np.ndarray, split: str, offset: int = 0) -> pd.DataFrame:
    """One row per image of one array of images (no row_id / cross_split_duplicate columns); len(x) == len(y)."""
    n = len(x)
    h, w, c = _shape_columns(x)
    stats = _image_stats(x)
    return pd.DataFrame(
        {
            "split": split,
            "index": np.arange(offset, offset + n, dtype=np.int64),
            "label": np.asarray(y).astype(np.int64).reshape(n, -1)[:, 0],
            "height": h,
            "width": w,
            "channels": c,
            "dtype": str(x.dtype),
            "mean": stats["mean"],
            "std": stats["std"],
            "min": stats["min"],
            "max": stats["max"],
            "non_finite": stats["non_finite"],
            "hash": image_hashes(x),
        }
    )


def with_row_ids(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with a leading row_id column 0..n-1 (in place; returned for chaining)."""
    df.insert(0, "row_id", np.arange(len(df), dtype=np.int64))
    return df


def _images_table(data_dir: Path) -> pd.DataFrame:
    """The images table of every split's shards, with the cross-split duplicate (leakage) flag."""
    parts: list[pd.DataFrame] = []
    for split in SPLITS:
        offset = 0
        for _, x, y in _iter_shards(data_dir, split):
            if len(x) == 0:
                continue
            parts.append(image_rows(x, y, split, offset))
            offset += len(x)
    if parts:
        images = pd.concat(parts, ignore_index=True)
        images["cross_split_duplicate"] = images.groupby("hash", sort=False)["split"].transform("nunique").gt(1)
    else:
        images = pd.DataFrame({c: pd.Series(dtype=t) for c, t in IMAGE_COLUMNS.items() if c != "row_id"})
    return with_row_ids(images)[list(IMAGE_COLUMNS)]


def _classes_table(images: pd.DataFrame, class_names: list[str]) -> pd.DataFrame:
    """Per (split, class) count, fraction and ratio to the uniform fraction; an empty stream split has no rows."""
    n_classes = len(class_names)
    rows = []
    for split in SPLITS:
        labels = images.loc[images["split"] == split, "label"].to_numpy()
        if split == "stream" and len(labels) == 0:
            continue
        total = len(labels)
        in_range = labels[(labels >= 0) & (labels < n_classes)]
        counts = np.bincount(in_range, minlength=n_classes) if n_classes else np.zeros(0, np.int64)
        for label, count in enumerate(counts):
            fraction = count / total if total else 0.0
            rows.append(
                {
                    "split": split,
                    "label": label,
                    "class_name": class_names[label],
                    "count": int(count),
                    "fraction": float(fraction),
                    "ratio_to_uniform": float(fraction * n_classes),
                }
            )
    return with_row_ids(pd.DataFrame(rows, columns=CLASS_COLUMNS))


def build_image_table(data_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Summarise every image of every split into (images_df, classes_df); see the module docstring."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    images = _images_table(data_dir)
    return images, _classes_table(images, list(manifest["class_names"]))


def split_table(images: pd.DataFrame, manifest: dict) -> pd.DataFrame:
    """One row per required split: its image count in `images` and the count manifest.json claims (-1 if none)."""
    counts = images["split"].value_counts()
    rows = [
        {
            "split": s,
            "count": int(counts.get(s, 0)),
            "manifest_count": int(manifest["splits"].get(s, {}).get("count", -1)),
        }
        for s in REQUIRED_SPLITS
    ]
    return with_row_ids(pd.DataFrame(rows))

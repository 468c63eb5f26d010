"""Image array helpers shared by ingest, validation, preprocessing and monitoring (uint8 NHWC in, no I/O)."""

from __future__ import annotations

import hashlib

import numpy as np

LUMINANCE = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 luma weights
_CHUNK = 4096  # images per block for float/int64 temporaries


def image_hashes(x: np.ndarray) -> np.ndarray:
    """sha1 hex digest of each image's bytes (object array, one per image): identifies duplicates across splits."""
    return np.array([hashlib.sha1(img.tobytes()).hexdigest() for img in np.ascontiguousarray(x)], dtype=object)


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
            block = x[start : start + _CHUNK].astype(np.float64) @ LUMINANCE
            out[start : start + _CHUNK, ..., 0] = np.clip(np.rint(block), 0, 255).astype(np.uint8)
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
        block = x[start : start + _CHUNK].reshape(-1, c).astype(np.int64)
        total += block.sum(axis=0)
        total_sq += (block * block).sum(axis=0)
    n = x.size // c
    mean = total / n
    var = np.maximum(total_sq / n - mean**2, 0.0)
    return [float(v) for v in mean], [float(v) for v in np.sqrt(var)]

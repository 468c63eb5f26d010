"""Simulated incoming data for the monitoring loop: slices of the held-out stream split with realistic drift.

`apply_drift` is pure (seeded by the caller's Generator). `write_batches` walks the stream split with a cursor file
in the output directory, so successive calls never reuse an image, and writes each batch atomically as
`batch-<UTC timestamp>-<seq>.npz` (x, y) plus a `.json` sidecar describing how it was made.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from scipy import ndimage

from pipeline.core import io
from pipeline.core.clock import utc_now
from pipeline.core.errors import StageError

KINDS = ("none", "brightness", "contrast", "noise", "blur", "label-shift")
CURSOR_FILE = "stream-cursor.json"


def _check(kind: str, severity: float) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown drift kind {kind!r}; choose one of {', '.join(KINDS)}")
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"severity must lie in [0, 1], got {severity}")


def _to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    values = np.clip(values, 0, 255)
    return np.rint(values).astype(dtype) if np.issubdtype(dtype, np.integer) else values.astype(dtype)


def _label_shift_indices(
    y: np.ndarray, severity: float, rng: np.random.Generator, num_classes: int, size: int | None = None
) -> tuple[np.ndarray, list[int]]:
    """Indices (ascending, no repeats) of a subset of `y` whose class mix moves towards one or two dominant classes.

    Target mix: (1 - severity) * (the mix of `y`) + severity * (uniform over the dominant classes). With `size`,
    the first images of each class (in order) fill per-class quotas for `size` images (fewer if `y` runs out);
    without, the largest subset with that mix is taken.
    """
    y = np.asarray(y).astype(np.int64).ravel()
    n_dom = int(rng.integers(1, 3)) if num_classes >= 5 else 1  # two of three or four is hardly a shift
    present = np.flatnonzero(np.bincount(y, minlength=num_classes)[:num_classes])
    dominant = sorted(int(c) for c in rng.choice(present, size=min(n_dom, len(present)), replace=False))
    available = np.bincount(y, minlength=num_classes)[:num_classes]
    mix = available / max(available.sum(), 1)
    target = (1 - severity) * mix
    target[dominant] += severity / len(dominant)
    if size is None:
        with np.errstate(divide="ignore"):
            size = int(
                min(len(y), np.min(np.where(target > 0, np.floor(available / np.maximum(target, 1e-12)), np.inf)))
            )
    # largest-remainder rounding of target * size
    raw = target * size
    quota = np.floor(raw).astype(np.int64)
    for c in np.argsort(-(raw - quota), kind="stable")[: size - int(quota.sum())]:
        quota[c] += 1
    chosen = [np.flatnonzero(y == c)[: quota[c]] for c in range(num_classes)]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64), dominant


def apply_drift(
    x: np.ndarray, y: np.ndarray, kind: str, severity: float, rng: np.random.Generator, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return a drifted copy of (x, y); severity in [0, 1], 0 returns the inputs unchanged.

    brightness: + severity*80 pixel offset; contrast: scaled around each image's mean by 1 - 0.7*severity;
    noise: gaussian, sigma severity*50; blur: gaussian, sigma (1 + 2*severity)/2 (~ radius 1 + 2*severity px);
    label-shift: the largest subset in which one class (one or two, seeded, with >= 5 classes) dominates; labels stay
    correct, fewer images come back. Otherwise pixels stay in 0..255 and keep their dtype and shape.
    """
    _check(kind, severity)
    x, y = np.asarray(x), np.asarray(y)
    if severity == 0 or kind == "none" or len(x) == 0:
        return x, y
    if kind == "label-shift":
        idx, _ = _label_shift_indices(y, severity, rng, num_classes)
        return x[idx], y[idx]
    xf = x.astype(np.float32)
    if kind == "brightness":
        out = xf + severity * 80.0
    elif kind == "contrast":
        axes = tuple(range(1, x.ndim))
        mean = xf.mean(axis=axes, keepdims=True)
        out = mean + (xf - mean) * (1.0 - 0.7 * severity)
    elif kind == "noise":
        out = xf + rng.normal(0.0, severity * 50.0, size=x.shape).astype(np.float32)
    else:  # blur: spatial axes only (N, H, W[, C])
        s = (1.0 + 2.0 * severity) / 2.0
        sigma = (0, s, s) + (0,) * (x.ndim - 3)
        out = ndimage.gaussian_filter(xf, sigma=sigma, mode="nearest")
    return _to_dtype(out, x.dtype), y.copy()


# --------------------------------------------------------------------------------------------- batches


def _fingerprint(x: np.ndarray, y: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(str((x.shape, str(x.dtype), len(y))).encode())
    digest.update(np.ascontiguousarray(y).tobytes())
    digest.update(np.ascontiguousarray(x).tobytes())
    return digest.hexdigest()


def _read_cursor(out_dir: Path, fingerprint: str) -> dict:
    path = out_dir / CURSOR_FILE
    if path.is_file():
        try:
            cursor = io.read_json(path)
        except ValueError as exc:
            raise StageError(
                f"{path}: not valid JSON ({exc}); delete it to restart from the start of the stream"
            ) from None
        if cursor.get("stream") == fingerprint:
            return cursor
    return {"stream": fingerprint, "next": 0, "batches": 0}  # new stream (or none yet): start at its beginning


def _make_batch(
    stream_x: np.ndarray,
    stream_y: np.ndarray,
    pos: int,
    kind: str,
    severity: float,
    batch_size: int,
    seed: int,
    num_classes: int,
) -> tuple[np.ndarray, np.ndarray, dict, int]:
    """(x, y, sidecar metadata, next position) of the batch starting at stream position `pos`."""
    rng = np.random.default_rng([seed, pos])
    meta = {"kind": kind, "severity": float(severity), "source": "stream", "seed": int(seed)}
    if kind == "label-shift" and severity > 0:
        idx, dominant = _label_shift_indices(stream_y[pos:], severity, rng, num_classes, size=batch_size)
        stop = pos + (int(idx[-1]) + 1 if len(idx) else 0)
        x, y = stream_x[pos:][idx], stream_y[pos:][idx]
        meta["dominant_classes"] = dominant
    else:
        stop = min(pos + batch_size, len(stream_x))
        x, y = apply_drift(stream_x[pos:stop], stream_y[pos:stop], kind, severity, rng, num_classes)
    if len(x) == 0:
        raise StageError(f"the stream split has no images left to make a {kind!r} batch")
    meta.update({"count": len(x), "stream_range": [pos, stop]})
    return x, y, meta, stop


def _save_batches(out_dir: Path, made: list[tuple[np.ndarray, np.ndarray, dict]]) -> list[Path]:
    """Write each (x, y, meta) as batch-<UTC timestamp>-<sequence>.npz with its .json sidecar (written first)."""
    stamp = utc_now().strftime("%Y%m%dT%H%M%S%fZ")
    paths = []
    for x, y, meta in made:
        path = out_dir / f"batch-{stamp}-{meta['sequence']:05d}.npz"
        meta["created_at"] = stamp
        io.write_json(path.with_suffix(".json"), meta)  # sidecar first: when the .npz appears, it is complete
        with io.atomic_path(path) as tmp:
            np.savez_compressed(tmp, x=x, y=y)
        paths.append(path)
    return paths


def write_batches(
    stream_x: np.ndarray,
    stream_y: np.ndarray,
    out_dir: str | Path,
    kind: str,
    severity: float,
    batch_size: int,
    count: int,
    seed: int,
    num_classes: int | None = None,
) -> list[Path]:
    """Write `count` drifted batches of up to `batch_size` consecutive stream images into `out_dir`; return paths.

    The cursor file `out_dir/stream-cursor.json` records where the next call starts (reset if the stream changes).
    Every batch is made before anything is written, so an exhausted stream raises StageError with nothing written;
    a final batch may be short when the stream ends inside it. The noise seed is (seed, cursor position).
    """
    _check(kind, severity)
    if batch_size < 1 or count < 1:
        raise ValueError(f"batch_size and count must be >= 1, got {batch_size} and {count}")
    stream_x, stream_y = np.asarray(stream_x), np.asarray(stream_y)
    if len(stream_x) != len(stream_y):
        raise StageError(f"stream split has {len(stream_x)} images but {len(stream_y)} labels")
    if num_classes is None:
        num_classes = int(stream_y.max()) + 1 if len(stream_y) else 1
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cursor = _read_cursor(out_dir, _fingerprint(stream_x, stream_y))

    pos, seq = int(cursor["next"]), int(cursor["batches"])
    made = []
    for _ in range(count):
        if pos >= len(stream_x):
            raise StageError(
                f"the stream split is exhausted ({len(stream_x)} images, {pos} already used by earlier "
                f"batches); delete {out_dir / CURSOR_FILE} to start over from the first image"
            )
        x, y, meta, pos = _make_batch(stream_x, stream_y, pos, kind, severity, batch_size, seed, num_classes)
        made.append((x, y, {**meta, "sequence": seq}))
        seq += 1
    paths = _save_batches(out_dir, made)
    io.write_json(
        out_dir / CURSOR_FILE, {"stream": cursor["stream"], "next": pos, "batches": seq, "stream_size": len(stream_x)}
    )
    return paths


def to_captured(batch: Path, out_dir: Path) -> Path:
    """Rewrite a written batch as unlabelled captured traffic: `out_dir/capture-<UTC stamp>-<uuid8>.npz` with x,
    request_id (`<uuid8>-<row>`) and time (no y, pred or probs: the monitor scores them with the champion). The
    sidecar moves along (with "unlabelled": true); the labelled batch is removed.
    """
    import uuid

    with np.load(batch, allow_pickle=False) as data:
        x = data["x"]
    now, tag = utc_now(), uuid.uuid4().hex[:8]
    path = Path(out_dir) / f"capture-{now.strftime('%Y%m%dT%H%M%SZ')}-{tag}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    sidecar = batch.with_suffix(".json")
    if sidecar.is_file():
        io.write_json(path.with_suffix(".json"), {**io.read_json(sidecar), "unlabelled": True, "from": batch.name})
        sidecar.unlink()
    ids = np.array([f"{tag}-{i:05d}" for i in range(len(x))], dtype=str)
    with io.atomic_path(path) as tmp:
        np.savez_compressed(tmp, x=x, request_id=ids, time=np.full(len(x), now.timestamp(), np.float64))
    batch.unlink()
    return path

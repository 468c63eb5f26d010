"""CIFAR-10 reader for the official "python version" (cifar-10-python.tar.gz or its extracted directory).

Each batch is a pickle. Pickle can run code, so batches are only read from the path the user configured
(the official release) and through a restricted unpickler that refuses everything but plain containers
and numpy arrays. The tarball is streamed and only members with the expected names are read into memory;
nothing is extracted to disk.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from pipeline.core.errors import DatasetError
from pipeline.data.dataset import RawDataset, download

TARBALL = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
META = "batches.meta"
_NEEDED = [*TRAIN_BATCHES, TEST_BATCH, META]
_ALLOWED = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        module = module.replace("numpy.core", "numpy._core", 1) if module.startswith("numpy.core") else module
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(data: bytes, name: str) -> dict:
    try:
        obj = _Unpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:
        raise DatasetError(f"{name}: not a valid CIFAR-10 python batch ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise DatasetError(f"{name}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _find(source: Path, url: str | None, cache_dir: Path) -> Path:
    """Return the tarball or the batches directory to read."""
    for candidate in (source, source / FOLDER, source / TARBALL, cache_dir / TARBALL):
        if candidate.is_file() or (candidate.is_dir() and (candidate / TEST_BATCH).exists()):
            return candidate
    if url:
        full = url if url.endswith((".tar.gz", ".tgz")) else f"{url.rstrip('/')}/{TARBALL}"
        return download(full, cache_dir / TARBALL)
    raise DatasetError(
        f"{source}: no {TARBALL} or {FOLDER}/ with the CIFAR-10 batches found and ingest.url is not set; "
        f"point ingest.source at the tarball or its extracted directory"
    )


def _read_members(path: Path) -> dict[str, bytes]:
    """Read the needed batch files from the extracted directory or (streaming) from the tarball."""
    if path.is_dir():
        return {n: (path / n).read_bytes() for n in _NEEDED if (path / n).is_file()}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in _NEEDED and base not in found:
                    member_file = tar.extractfile(member)
                    if member_file is not None:  # None for non-regular members (directories, links)
                        found[base] = member_file.read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DatasetError(f"{path}: corrupt or truncated tarball ({exc}); re-download it") from exc
    return found


def _batch(blob: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(blob, name)
    missing = [k.decode() for k in (b"data", b"labels") if k not in d]
    if missing:
        raise DatasetError(
            f"{name}: batch is missing key(s) {missing}; expected an official CIFAR-10 python batch "
            "(a dict with b'data' and b'labels'): re-download cifar-10-python.tar.gz"
        )
    x = np.asarray(d[b"data"])
    y = np.asarray(d[b"labels"])
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{name}: data must be uint8 of shape (N, 3072), got {x.dtype} {x.shape}")
    if y.ndim != 1 or len(y) != len(x) or (len(y) and y.dtype.kind not in "iu"):
        raise DatasetError(f"{name}: {len(x)} images but labels of shape {y.shape} ({y.dtype})")
    return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y.astype(np.int64)


def read_cifar10(source: str, url: str | None, cache_dir: Path) -> RawDataset:
    """Read CIFAR-10 (python version) into uint8 (N, 32, 32, 3) images with the official class names."""
    path = _find(Path(source), url, Path(cache_dir))
    blobs = _read_members(path)
    missing = [n for n in _NEEDED if n not in blobs]
    if missing:
        raise DatasetError(f"{path}: missing CIFAR-10 file(s) {missing}")
    meta = _unpickle(blobs[META], f"{path}/{META}")
    if b"label_names" not in meta:
        raise DatasetError(f"{path}/{META}: missing key 'label_names'")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]
    parts = [_batch(blobs[n], f"{path}/{n}") for n in TRAIN_BATCHES]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = _batch(blobs[TEST_BATCH], f"{path}/{TEST_BATCH}")
    for split, y in (("train", train_y), ("test", test_y)):
        if len(y) and (y.min() < 0 or y.max() >= len(names)):
            raise DatasetError(f"{path}: {split} label {int(y.max())} out of range for {len(names)} label_names")
    sources = {n: hashlib.sha256(blobs[n]).hexdigest() for n in _NEEDED}
    return RawDataset(train_x, train_y, names, np.ascontiguousarray(test_x), test_y, sources)

"""IDX reader (the MNIST / Fashion-MNIST format), gzipped or raw.

An IDX file is a big-endian header -- two zero bytes, a type code (0x08 = uint8, ...), the number of
dimensions -- followed by one uint32 per dimension and the row-major data. Images are 0x00000803,
labels 0x00000801.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pipeline.core.errors import DatasetError
from pipeline.data.dataset import RawDataset, locate

FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# sha256 of the *decompressed* official files (the .gz bytes differ between mirrors / repackagings).
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_bytes(path: str | Path) -> bytes:
    """Return the file's bytes, gunzipped if it is gzip; DatasetError if the gzip stream is corrupt."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: not found") from exc
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from exc
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: corrupt or truncated gzip ({exc}); re-download the file") from exc


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes into an array of the declared type and shape; DatasetError naming `name` if malformed."""
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _DTYPES:
        raise DatasetError(f"{name}: not an IDX file (bad magic {data[:4].hex() or 'empty'}; expected 000008nn)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DatasetError(f"{name}: truncated IDX header ({len(data)} bytes for {ndim} dimensions)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_DTYPES[data[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise DatasetError(
            f"{name}: IDX header declares shape {shape} ({expected} data bytes) but the file has "
            f"{len(data) - header}; the file is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | Path) -> np.ndarray:
    """Read one (optionally gzipped) IDX file."""
    return parse_idx(read_bytes(path), str(path))


def _load(path: Path, expected_sha256: Mapping[str, str] | None) -> tuple[np.ndarray, str]:
    data = read_bytes(path)
    digest = hashlib.sha256(data).hexdigest()
    want = (expected_sha256 or {}).get(path.name)
    if want is not None and want != digest:
        raise DatasetError(
            f"{path}: checksum mismatch of the decompressed bytes: expected sha256 {want}, got {digest}; "
            "the file is corrupt or not the official release"
        )
    return parse_idx(data, str(path)), digest


def _pair(
    images: Path,
    labels: Path,
    n_classes: int | None,
    expected_sha256: Mapping[str, str] | None,
    sources: dict[str, str],
) -> tuple[np.ndarray, np.ndarray]:
    x, sources[images.name] = _load(images, expected_sha256)
    y, sources[labels.name] = _load(labels, expected_sha256)
    if x.ndim != 3 or x.dtype != np.uint8:
        raise DatasetError(f"{images}: expected uint8 images (magic 00000803), got {x.dtype} {x.shape}")
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DatasetError(f"{labels}: expected 1-D integer labels (magic 00000801), got {y.dtype} {y.shape}")
    if len(x) != len(y):
        raise DatasetError(f"{images} has {len(x)} images but {labels} has {len(y)} labels")
    if len(y) and (y.min() < 0 or (n_classes is not None and y.max() >= n_classes)):
        bad = int(y.min()) if y.min() < 0 else int(y.max())
        raise DatasetError(f"{labels}: label {bad} out of range [0, {n_classes})")
    return x[..., None], y.astype(np.int64)


def load_idx_dataset(
    directory: str | Path,
    files: Mapping[str, str],
    expected_sha256: Mapping[str, str] | None = None,
    class_names: list[str] | None = None,
) -> RawDataset:
    """Read IDX files named in `files` (keys train_images, train_labels[, test_images, test_labels]).

    `expected_sha256` maps file name -> sha256 of its decompressed bytes; listed files are verified.
    Without `class_names`, classes are named "0".."max label".
    """
    directory = Path(directory)
    n_classes = len(class_names) if class_names is not None else None
    sources: dict[str, str] = {}
    paths = {role: directory / name for role, name in files.items()}
    train_x, train_y = _pair(paths["train_images"], paths["train_labels"], n_classes, expected_sha256, sources)
    test_x = test_y = None
    if "test_images" in paths:
        test_x, test_y = _pair(paths["test_images"], paths["test_labels"], n_classes, expected_sha256, sources)
        if test_x.shape[1:] != train_x.shape[1:]:
            raise DatasetError(f"{directory}: test images are {test_x.shape[1:]} but train images {train_x.shape[1:]}")
    if class_names is None:
        top = max((int(y.max()) for y in (train_y, test_y) if y is not None and len(y)), default=-1)
        class_names = [str(i) for i in range(top + 1)]
    return RawDataset(train_x, train_y, list(class_names), test_x, test_y, sources)


def read_fashion_mnist(source: str, url: str | None, cache_dir: Path) -> RawDataset:
    """Read the official Fashion-MNIST IDX files from `source` (downloading missing ones from `url`), verified."""
    source_dir, cache_dir = Path(source), Path(cache_dir)
    hint = "Run `make dataset` (dvc pull, else the Debian package dataset-fashion-mnist), or set ingest.source / url."
    paths = {role: locate(name, source_dir, url, cache_dir, hint) for role, name in FASHION_MNIST_FILES.items()}
    sources: dict[str, str] = {}
    n = len(FASHION_MNIST_CLASSES)
    train_x, train_y = _pair(paths["train_images"], paths["train_labels"], n, FASHION_MNIST_SHA256, sources)
    test_x, test_y = _pair(paths["test_images"], paths["test_labels"], n, FASHION_MNIST_SHA256, sources)
    return RawDataset(train_x, train_y, list(FASHION_MNIST_CLASSES), test_x, test_y, sources)

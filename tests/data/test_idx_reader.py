"""IDX reader: generated gzipped IDX files in the exact on-disk format, plus the real Fashion-MNIST if installed."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.idx import FASHION_MNIST_FILES, load_idx_dataset, read_fashion_mnist, read_idx
from pipeline.core.errors import DatasetError

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(arr: np.ndarray, type_code: int = 0x08) -> bytes:
    header = struct.pack(">BBBB", 0, 0, type_code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(">u1" if type_code == 0x08 else ">i4").tobytes()


def write_idx(path: Path, arr: np.ndarray, compress: bool = True) -> Path:
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path


@pytest.fixture
def idx_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    write_idx(tmp_path / FILES["train_images"], rng.integers(0, 256, (30, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / FILES["train_labels"], np.arange(30, dtype=np.uint8) % 10)
    write_idx(tmp_path / FILES["test_images"], rng.integers(0, 256, (10, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / FILES["test_labels"], np.arange(10, dtype=np.uint8))
    return tmp_path


def test_read_idx_roundtrip_gzip_and_raw(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "a.gz", arr)), arr)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "a.idx", arr, compress=False)), arr)


def test_read_idx_header_is_big_endian(tmp_path: Path) -> None:
    arr = np.zeros((300, 2), np.uint8)
    raw = idx_bytes(arr)
    assert raw[:4] == b"\x00\x00\x08\x02" and raw[4:8] == (300).to_bytes(4, "big")
    assert read_idx(write_idx(tmp_path / "b.gz", arr)).shape == (300, 2)


def test_load_dataset_shapes_and_sources(idx_dir: Path) -> None:
    raw = load_idx_dataset(idx_dir, FILES, None, class_names=[f"c{i}" for i in range(10)])
    assert raw.train_x.shape == (30, 28, 28, 1) and raw.train_x.dtype == np.uint8
    assert raw.test_x.shape == (10, 28, 28, 1)
    assert raw.train_y.tolist() == [i % 10 for i in range(30)]
    want = hashlib.sha256(gzip.decompress((idx_dir / FILES["train_images"]).read_bytes())).hexdigest()
    assert raw.sources[FILES["train_images"]] == want and len(raw.sources) == 4


def test_default_class_names(idx_dir: Path) -> None:
    assert load_idx_dataset(idx_dir, FILES).class_names == [str(i) for i in range(10)]


def test_wrong_magic_names_file(idx_dir: Path) -> None:
    path = idx_dir / FILES["train_labels"]
    path.write_bytes(gzip.compress(b"\x12\x34\x56\x78" + bytes(30)))
    with pytest.raises(DatasetError, match=r"train-labels-idx1-ubyte\.gz.*magic"):
        load_idx_dataset(idx_dir, FILES)


def test_truncated_gzip(idx_dir: Path) -> None:
    path = idx_dir / FILES["train_images"]
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz.*(truncated|corrupt)"):
        load_idx_dataset(idx_dir, FILES)


def test_truncated_payload(idx_dir: Path) -> None:
    path = idx_dir / FILES["test_images"]
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-5]))
    with pytest.raises(DatasetError, match="truncated"):
        load_idx_dataset(idx_dir, FILES)


def test_count_mismatch(idx_dir: Path) -> None:
    write_idx(idx_dir / FILES["train_labels"], np.zeros(29, np.uint8))
    with pytest.raises(DatasetError, match="30 images but .* 29 labels"):
        load_idx_dataset(idx_dir, FILES)


def test_label_out_of_range(idx_dir: Path) -> None:
    with pytest.raises(DatasetError, match="label 9 out of range"):
        load_idx_dataset(idx_dir, FILES, class_names=["a", "b", "c"])


def test_checksum_mismatch_message(idx_dir: Path) -> None:
    bad = {FILES["train_labels"]: "0" * 64}
    with pytest.raises(DatasetError) as info:
        load_idx_dataset(idx_dir, FILES, bad)
    actual = hashlib.sha256(gzip.decompress((idx_dir / FILES["train_labels"]).read_bytes())).hexdigest()
    assert FILES["train_labels"] in str(info.value) and "0" * 64 in str(info.value) and actual in str(info.value)


def test_checksum_match_passes(idx_dir: Path) -> None:
    good = {n: hashlib.sha256(gzip.decompress((idx_dir / n).read_bytes())).hexdigest() for n in FILES.values()}
    assert load_idx_dataset(idx_dir, FILES, good).sources == good


def test_fashion_mnist_rejects_non_official_files(idx_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="checksum mismatch"):
        read_fashion_mnist(str(idx_dir), None, tmp_path / "cache")


def test_missing_files_without_url(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dataset-fashion-mnist"):
        read_fashion_mnist(str(tmp_path / "nowhere"), None, tmp_path / "cache")


def test_missing_files_download_from_file_url(idx_dir: Path, tmp_path: Path) -> None:
    # file:// exercises the download path without a network; the files then fail the official checksum.
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError, match="checksum mismatch"):
        read_fashion_mnist(str(tmp_path / "nowhere"), idx_dir.as_uri(), cache)
    assert sorted(p.name for p in cache.iterdir()) == sorted(FASHION_MNIST_FILES.values())


def test_download_failure_is_clear(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="could not download"):
        read_fashion_mnist(str(tmp_path / "nowhere"), (tmp_path / "no-mirror").as_uri(), tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*"))  # no partial files left


@pytest.mark.skipif(not DEBIAN.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist(tmp_path: Path) -> None:
    raw = read_fashion_mnist(str(DEBIAN), None, tmp_path)
    assert raw.train_x.shape == (60000, 28, 28, 1) and raw.test_x.shape == (10000, 28, 28, 1)
    assert len(raw.class_names) == 10 and raw.class_names[9] == "Ankle boot"
    assert np.bincount(raw.train_y).tolist() == [6000] * 10

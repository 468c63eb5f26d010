"""CIFAR-10 reader: a genuine cifar-10-python.tar.gz in the official layout, tarball and extracted directory."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.cifar import read_cifar10
from pipeline.core.errors import DatasetError

N = 20
NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
BATCHES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]


def batch(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (N, 3072), dtype=np.uint8)
    data[0, 0 * 1024 + 5 * 32 + 7] = 11  # image 0, pixel (row 5, col 7): R plane
    data[0, 1 * 1024 + 5 * 32 + 7] = 22  # G plane
    data[0, 2 * 1024 + 5 * 32 + 7] = 33  # B plane
    return {b"batch_label": b"batch", b"labels": [int(v) for v in rng.integers(0, 10, N)], b"data": data,
            b"filenames": [f"img_{i}.png".encode() for i in range(N)]}


def blobs(**override: dict) -> dict[str, bytes]:
    out = {name: pickle.dumps(override.get(name.replace(".", "_"), batch(i)), protocol=2)
           for i, name in enumerate(BATCHES)}
    out["batches.meta"] = pickle.dumps(override.get("meta", {b"label_names": [n.encode() for n in NAMES],
                                                             b"num_cases_per_batch": N, b"num_vis": 3072}))
    return out


def make_tarball(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def make_dir(root: Path, files: dict[str, bytes]) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return root


def check(raw) -> None:
    assert raw.train_x.shape == (5 * N, 32, 32, 3) and raw.train_x.dtype == np.uint8
    assert raw.test_x.shape == (N, 32, 32, 3)
    assert raw.class_names == NAMES
    assert raw.train_x[0, 5, 7].tolist() == [11, 22, 33]
    assert raw.train_x[4 * N, 5, 7].tolist() == [11, 22, 33]  # first image of data_batch_5
    assert raw.test_x[0, 5, 7].tolist() == [11, 22, 33]
    assert raw.train_y[:N].tolist() == batch(0)[b"labels"]
    expected = batch(1)[b"data"][3].reshape(3, 32, 32).transpose(1, 2, 0)
    np.testing.assert_array_equal(raw.train_x[N + 3], expected)
    assert set(raw.sources) == {*BATCHES, "batches.meta"}


def test_tarball(tmp_path: Path) -> None:
    path = make_tarball(tmp_path / "cifar-10-python.tar.gz", blobs())
    check(read_cifar10(str(path), None, tmp_path / "cache"))
    check(read_cifar10(str(tmp_path), None, tmp_path / "cache"))  # directory holding the tarball


def test_extracted_directory(tmp_path: Path) -> None:
    root = make_dir(tmp_path / "src", blobs())
    check(read_cifar10(str(root), None, tmp_path / "cache"))
    check(read_cifar10(str(root / "cifar-10-batches-py"), None, tmp_path / "cache"))


def test_download_from_file_url(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    make_tarball(mirror / "cifar-10-python.tar.gz", blobs())
    check(read_cifar10(str(tmp_path / "missing"), mirror.as_uri(), tmp_path / "cache"))
    assert (tmp_path / "cache" / "cifar-10-python.tar.gz").is_file()


def test_missing_keys(tmp_path: Path) -> None:
    bad = batch(2)
    del bad[b"labels"]
    root = make_dir(tmp_path, blobs(data_batch_3=bad))
    with pytest.raises(DatasetError, match=r"data_batch_3.*missing key.*labels"):
        read_cifar10(str(root), None, tmp_path / "cache")


def test_missing_label_names(tmp_path: Path) -> None:
    root = make_dir(tmp_path, blobs(meta={b"num_vis": 3072}))
    with pytest.raises(DatasetError, match="label_names"):
        read_cifar10(str(root), None, tmp_path / "cache")


def test_wrong_data_length(tmp_path: Path) -> None:
    bad = batch(0)
    bad[b"data"] = bad[b"data"][:, :3000]
    root = make_dir(tmp_path, blobs(data_batch_1=bad))
    with pytest.raises(DatasetError, match=r"data_batch_1.*\(N, 3072\)"):
        read_cifar10(str(root), None, tmp_path / "cache")


def test_missing_batch(tmp_path: Path) -> None:
    files = blobs()
    del files["data_batch_4"]
    path = make_tarball(tmp_path / "cifar-10-python.tar.gz", files)
    with pytest.raises(DatasetError, match="data_batch_4"):
        read_cifar10(str(path), None, tmp_path / "cache")


def test_truncated_tarball(tmp_path: Path) -> None:
    path = make_tarball(tmp_path / "cifar-10-python.tar.gz", blobs())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetError, match="corrupt or truncated"):
        read_cifar10(str(path), None, tmp_path / "cache")


def test_refuses_arbitrary_pickled_objects(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    root = make_dir(tmp_path, {**blobs(), "test_batch": pickle.dumps(Evil())})
    with pytest.raises(DatasetError, match="refusing"):
        read_cifar10(str(root), None, tmp_path / "cache")


def test_not_found(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cifar-10-python.tar.gz"):
        read_cifar10(str(tmp_path / "missing"), None, tmp_path / "cache")


def test_reads_batches_pickled_by_old_numpy(tmp_path: Path) -> None:
    # The official files were written by Python 2 / numpy 1.x, whose pickles name numpy.core.multiarray.
    files = {k: v.replace(b"numpy._core.multiarray", b"numpy.core.multiarray") for k, v in blobs().items()}
    assert b"numpy.core.multiarray" in files["test_batch"]
    check(read_cifar10(str(make_dir(tmp_path, files)), None, tmp_path / "cache"))

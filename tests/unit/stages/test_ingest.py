"""Ingest stage: splits, stratification, determinism, duplicate removal, manifest, atomic output."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.stages import ingest

from pipeline.core import io
from pipeline.core.config import IngestConfig
from pipeline.data.dataset import RawDataset
from pipeline.core.errors import DatasetError

SPLITS = ("train", "val", "test", "stream")
MANIFEST_KEYS = {"dataset", "class_names", "image_shape", "seed", "splits", "sources", "duplicates_dropped", "checksum", "monitoring"}


def unique_images(n: int, seed: int, shape=(6, 6, 1)) -> np.ndarray:
    """n distinct uint8 images (first pixels encode the index, so no accidental duplicates)."""
    x = np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)
    x[:, 0, 0, 0], x[:, 0, 1, 0] = np.arange(n) % 256, np.arange(n) // 256
    x[:, 0, 2, 0] = seed
    return x


def raw_dataset(per_class: int = 100, n_classes: int = 3, with_test: bool = False) -> RawDataset:
    y = np.repeat(np.arange(n_classes), per_class)
    test = dict(test_x=unique_images(10 * n_classes, 2), test_y=np.repeat(np.arange(n_classes), 10)) if with_test else {}
    return RawDataset(unique_images(len(y), 1), y, [f"c{i}" for i in range(n_classes)], sources={"f": "0" * 64}, **test)


def cfg(**kw) -> IngestConfig:
    base = dict(dataset="image-folder", val_fraction=0.1, stream_fraction=0.1, test_fraction=0.2, shard_size=100)
    return IngestConfig(**{**base, **kw})


@pytest.fixture
def use_raw(monkeypatch: pytest.MonkeyPatch):
    def install(raw: RawDataset) -> None:
        monkeypatch.setattr(ingest, "read_dataset", lambda c, cache_dir: raw)
    return install


def hashes(x: np.ndarray) -> set[str]:
    return {hashlib.sha1(i.tobytes()).hexdigest() for i in x}


def test_counts_add_up_and_are_stratified(tmp_path: Path, use_raw) -> None:
    use_raw(raw_dataset(100, 3))
    m = ingest.run(cfg(), seed=1, out_dir=tmp_path / "out")
    counts = {s: m["splits"][s]["count"] for s in SPLITS}
    assert counts == {"train": 192, "val": 24, "test": 60, "stream": 24}
    assert m["splits"]["test"]["class_counts"] == [20, 20, 20]
    assert m["splits"]["val"]["class_counts"] == [8, 8, 8]
    assert m["splits"]["train"]["class_counts"] == [64, 64, 64]
    assert sum(counts.values()) == 300
    for s in SPLITS:
        x, y = io.read_split(tmp_path / "out", s)
        assert x.dtype == np.uint8 and x.shape[1:] == (6, 6, 1) and y.dtype == np.uint8
        assert np.bincount(y, minlength=3).tolist() == m["splits"][s]["class_counts"]
    assert len(m["splits"]["train"]["shards"]) == 2  # shard_size 100


def test_existing_test_split_is_kept(tmp_path: Path, use_raw) -> None:
    raw = raw_dataset(50, 3, with_test=True)
    use_raw(raw)
    ingest.run(cfg(), seed=0, out_dir=tmp_path / "out")
    x, _ = io.read_split(tmp_path / "out", "test")
    assert hashes(x) == hashes(raw.test_x)


def test_deterministic_and_seed_sensitive(tmp_path: Path, use_raw) -> None:
    use_raw(raw_dataset(60, 3))
    a = ingest.run(cfg(), seed=7, out_dir=tmp_path / "a")
    b = ingest.run(cfg(), seed=7, out_dir=tmp_path / "b")
    c = ingest.run(cfg(), seed=8, out_dir=tmp_path / "c")
    assert a == b and a["checksum"] != c["checksum"]
    for shard in (s for split in a["splits"].values() for s in split["shards"]):
        assert (tmp_path / "a" / shard["file"]).read_bytes() == (tmp_path / "b" / shard["file"]).read_bytes()
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()


def test_cross_split_duplicates_dropped_and_counted(tmp_path: Path, use_raw) -> None:
    raw = raw_dataset(60, 3, with_test=True)
    x, y = raw.train_x.copy(), raw.train_y.copy()
    x[:5] = raw.test_x[:5]            # 5 train images that also sit in test
    x[100:120] = x[120:140]           # 20 pairs duplicated within train (may straddle train/val/stream)
    use_raw(RawDataset(x, y, raw.class_names, raw.test_x, raw.test_y))
    m = ingest.run(cfg(), seed=3, out_dir=tmp_path / "out")
    split_hashes = {s: hashes(io.read_split(tmp_path / "out", s)[0]) for s in SPLITS}
    for i, s in enumerate(SPLITS):
        for t in SPLITS[i + 1:]:
            assert not split_hashes[s] & split_hashes[t], (s, t)
    dropped = m["duplicates_dropped"]
    assert set(dropped) == set(SPLITS) and dropped["test"] == 0
    assert sum(m["splits"][s]["count"] for s in SPLITS) + sum(dropped.values()) == 180 + 30
    assert sum(dropped.values()) >= 5

    keep = ingest.run(cfg(drop_cross_split_duplicates=False), seed=3, out_dir=tmp_path / "keep")
    assert sum(keep["duplicates_dropped"].values()) == 0


def test_drop_duplicates_priority() -> None:
    h = {"test": np.array(["a"]), "val": np.array(["a", "b"]), "stream": np.array(["b", "c"]),
         "train": np.array(["a", "b", "c", "d", "d"])}
    keep, dropped = ingest.drop_duplicates(h)
    assert dropped == {"train": 3, "val": 1, "test": 0, "stream": 1}
    assert keep["train"].tolist() == [False, False, False, True, True]  # within-split duplicates are kept


def test_stream_fraction_zero(tmp_path: Path, use_raw) -> None:
    use_raw(raw_dataset(40, 2))
    m = ingest.run(cfg(stream_fraction=0.0), seed=0, out_dir=tmp_path / "out")
    assert m["splits"]["stream"]["count"] == 0 and m["splits"]["stream"]["class_counts"] == [0, 0]
    x, y = io.read_split(tmp_path / "out", "stream")
    assert x.shape == (0, 6, 6, 1) and len(y) == 0


def test_max_per_class(tmp_path: Path, use_raw) -> None:
    use_raw(raw_dataset(100, 3, with_test=True))
    m = ingest.run(cfg(max_per_class=20), seed=0, out_dir=tmp_path / "out")
    assert m["splits"]["test"]["class_counts"] == [4, 4, 4]
    per_class = np.sum([m["splits"][s]["class_counts"] for s in ("train", "val", "stream")], axis=0)
    assert per_class.tolist() == [20, 20, 20]


def test_manifest_schema_and_checksums(tmp_path: Path, use_raw) -> None:
    use_raw(raw_dataset(30, 3))
    m = ingest.run(cfg(), seed=5, out_dir=tmp_path / "out")
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == m
    assert set(m) == MANIFEST_KEYS and set(m["splits"]) == set(SPLITS)
    assert m["image_shape"] == [6, 6, 1] and m["seed"] == 5 and m["class_names"] == ["c0", "c1", "c2"]
    assert m["sources"] == {"f": "0" * 64}
    all_hashes = []
    for info in m["splits"].values():
        assert set(info) == {"count", "class_counts", "shards"}
        for shard in info["shards"]:
            assert set(shard) == {"file", "count", "sha256"}
            assert io.sha256_file(tmp_path / "out" / shard["file"]) == shard["sha256"]
            all_hashes.append(shard["sha256"])
    assert m["checksum"] == hashlib.sha256(json.dumps(sorted(all_hashes)).encode()).hexdigest()


def test_failure_leaves_nothing_behind(tmp_path: Path, use_raw, monkeypatch: pytest.MonkeyPatch) -> None:
    use_raw(raw_dataset(30, 3))
    real = io.write_shards

    def flaky(directory, split, *args, **kw):
        if split == "test":
            raise OSError("disk full")
        return real(directory, split, *args, **kw)

    monkeypatch.setattr(io, "write_shards", flaky)
    with pytest.raises(OSError, match="disk full"):
        ingest.run(cfg(), seed=0, out_dir=tmp_path / "out")
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(io, "write_shards", real)
    good = ingest.run(cfg(), seed=0, out_dir=tmp_path / "out")
    monkeypatch.setattr(io, "write_shards", flaky)
    with pytest.raises(OSError):
        ingest.run(cfg(), seed=1, out_dir=tmp_path / "out")
    assert io.read_json(tmp_path / "out" / "manifest.json") == good  # previous output untouched
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_bad_labels_rejected(tmp_path: Path, use_raw) -> None:
    raw = raw_dataset(10, 2)
    use_raw(RawDataset(raw.train_x, raw.train_y + 1, raw.class_names))
    with pytest.raises(DatasetError, match="labels must lie in"):
        ingest.run(cfg(), seed=0, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def write_folder(root: Path, per_class: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for c in ("ant", "bee"):
        for split, n in (("train", per_class), ("test", 3)):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (9, 7), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def test_end_to_end_image_folder_via_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app

    src = write_folder(tmp_path / "src")
    params = tmp_path / "params.yaml"
    params.write_text(f"seed: 3\ningest:\n  dataset: image-folder\n  source: {src}\n  image_size: [8, 8]\n"
                      f"  channels: 1\n  val_fraction: 0.25\n  stream_fraction: 0.25\n  shard_size: 100\n")
    result = CliRunner().invoke(app, ["ingest", "--params", str(params), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    m = io.read_json(tmp_path / "out" / "manifest.json")
    assert m["dataset"] == "image-folder" and m["class_names"] == ["ant", "bee"] and m["image_shape"] == [8, 8, 1]
    assert {s: m["splits"][s]["count"] for s in SPLITS} == {"train": 12, "val": 6, "test": 6, "stream": 6}
    assert set(m["sources"]) == {"train/", "test/"}
    assert "'train': 12" in result.output


def test_cli_reports_dataset_error(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app

    params = tmp_path / "params.yaml"
    params.write_text(f"ingest:\n  dataset: image-folder\n  source: {tmp_path / 'missing'}\n")
    result = CliRunner().invoke(app, ["ingest", "--params", str(params), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "train" in result.output and not (tmp_path / "out").exists()


def test_accepted_batches_join_train_and_leave_stream(tmp_path: Path) -> None:
    """Monitoring batches accepted for retraining become training data; consumed stream images leave the stream."""
    from pipeline.stages.ingest import add_accepted

    rng = np.random.default_rng(0)

    def imgs(n):
        return rng.integers(0, 255, (n, 4, 4, 1), dtype=np.uint8), rng.integers(0, 2, n).astype(np.uint8)

    splits = {"train": imgs(10), "val": imgs(4), "test": imgs(4), "stream": imgs(6)}
    leaked = splits["test"][0][:1]
    ax = np.concatenate([splits["stream"][0][:3], leaked, imgs(2)[0]])
    ay = np.array([0, 1, 0, 1, 0, 1])
    out, info = add_accepted(splits, (ax, ay), 2, seed=0)
    assert info == {"accepted": 5, "accepted_dropped_as_leakage": 1, "stream_consumed": 3}
    assert len(out["train"][0]) == 15 and len(out["stream"][0]) == 3
    assert out["val"][0] is splits["val"][0]

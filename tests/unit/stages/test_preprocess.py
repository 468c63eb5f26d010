"""Preprocess stage: channel conversion, train-split statistics, shard round trip."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

_ROOT = str(Path(__file__).resolve().parents[3])  # so `tests.helpers` imports under plain `pytest` too
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from pipeline.core import io  # noqa: E402
from pipeline.stages import preprocess  # noqa: E402
from pipeline.core.config import PreprocessConfig  # noqa: E402
from pipeline.core.errors import StageError  # noqa: E402
from tests.helpers import good_splits, make_images, write_ingested  # noqa: E402

CLASSES = ["a", "b", "c"]


# --- convert_channels ------------------------------------------------------------------------------------------

def test_grey_to_rgb_repeats_channel():
    x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4, 1)
    out = preprocess.convert_channels(x, 3)
    assert out.shape == (2, 3, 4, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], x[..., 0])


@pytest.mark.parametrize(("rgb", "grey"), [
    ((255, 0, 0), 76),      # 76.245
    ((0, 255, 0), 150),     # 149.685
    ((0, 0, 255), 29),      # 29.07
    ((255, 255, 255), 255),
    ((0, 0, 0), 0),
    ((10, 20, 30), 18),     # 2.99 + 11.74 + 3.42 = 18.15
    ((100, 101, 99), 100),  # 29.9 + 59.287 + 11.286 = 100.473
])
def test_rgb_to_grey_uses_rounded_luminance(rgb, grey):
    x = np.array(rgb, dtype=np.uint8).reshape(1, 1, 1, 3)
    out = preprocess.convert_channels(x, 1)
    assert out.shape == (1, 1, 1, 1) and out.dtype == np.uint8
    assert int(out[0, 0, 0, 0]) == grey


def test_rgb_to_grey_matches_formula_on_random_images():
    x = np.random.default_rng(0).integers(0, 256, (5000, 2, 2, 3), dtype=np.uint8)  # > one internal chunk
    expected = np.rint(x.astype(np.float64) @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    np.testing.assert_array_equal(preprocess.convert_channels(x, 1)[..., 0], expected)


@pytest.mark.parametrize("channels", [1, 3])
def test_same_channels_is_identity(channels):
    x = np.random.default_rng(1).integers(0, 256, (3, 4, 4, channels), dtype=np.uint8)
    np.testing.assert_array_equal(preprocess.convert_channels(x, channels), x)


def test_three_dim_input_is_single_channel():
    x = np.ones((2, 4, 4), dtype=np.uint8)
    assert preprocess.convert_channels(x, 1).shape == (2, 4, 4, 1)
    assert preprocess.convert_channels(x, 3).shape == (2, 4, 4, 3)


@pytest.mark.parametrize("x", [
    np.zeros((1, 2, 2, 1), dtype=np.float32),  # not uint8
    np.zeros((1, 2, 2, 2), dtype=np.uint8),     # 2 channels
    np.zeros((4,), dtype=np.uint8),             # not images
])
def test_bad_inputs_raise(x):
    with pytest.raises(ValueError):
        preprocess.convert_channels(x, 3)


def test_empty_split_converts():
    assert preprocess.convert_channels(np.zeros((0, 5, 5, 1), np.uint8), 3).shape == (0, 5, 5, 3)
    assert preprocess.convert_channels(np.zeros((0, 5, 5, 3), np.uint8), 1).shape == (0, 5, 5, 1)


# --- channel_stats ---------------------------------------------------------------------------------------------

def test_channel_stats_match_numpy():
    rng = np.random.default_rng(2)
    x = np.stack([rng.integers(0, 50, (5000, 3, 3)), rng.integers(100, 256, (5000, 3, 3)),
                  np.full((5000, 3, 3), 7)], axis=-1).astype(np.uint8)
    mean, std = preprocess.channel_stats(x)
    f = x.astype(np.float64)
    np.testing.assert_allclose(mean, f.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(std, f.std(axis=(0, 1, 2)), rtol=1e-9, atol=1e-9)
    assert std[2] == 0.0 and mean[2] == 7.0
    assert all(isinstance(v, float) for v in mean + std)


def test_channel_stats_known_values():
    x = np.array([0, 255], dtype=np.uint8).reshape(2, 1, 1, 1)
    assert preprocess.channel_stats(x) == ([127.5], [127.5])


def test_channel_stats_empty_raises():
    with pytest.raises(ValueError):
        preprocess.channel_stats(np.zeros((0, 2, 2, 1), np.uint8))


# --- run: shard round trip -------------------------------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 3])
def test_run_round_trip_grey_input(tmp_path, channels):
    splits = good_splits()
    data = write_ingested(tmp_path / "ingested", splits, CLASSES)
    out = tmp_path / "prepared"
    stats = preprocess.run(PreprocessConfig(channels=channels), data, out)

    for split, (x, y) in splits.items():
        x2, y2 = io.read_split(out, split)
        assert x2.dtype == np.uint8 and x2.shape == (*x.shape[:3], channels)
        np.testing.assert_array_equal(x2, np.repeat(x, channels, axis=-1))
        np.testing.assert_array_equal(y2, y)

    train = splits["train"][0].astype(np.float64)
    assert stats["image_shape"] == [8, 8, channels]
    np.testing.assert_allclose(stats["mean"], [train.mean()] * channels)
    np.testing.assert_allclose(stats["std"], [train.std()] * channels)
    manifest = json.loads((data / "manifest.json").read_text())
    assert stats["class_names"] == CLASSES
    assert stats["counts"] == {s: len(x) for s, (x, _) in splits.items()}
    assert stats["source_checksum"] == manifest["checksum"]
    assert json.loads((out / "stats.json").read_text()) == stats
    assert json.loads((out / "manifest.json").read_text()) == manifest
    # uncompressed shards, as recorded
    for split, shards in stats["shards"].items():
        for shard in shards:
            assert io.sha256_file(out / shard["file"]) == shard["sha256"]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no atomic_dir leftovers


def test_run_rgb_to_grey_and_stats_use_train_only(tmp_path):
    rng = np.random.default_rng(3)
    train = (rng.integers(0, 256, (30, 4, 4, 3), dtype=np.uint8), np.repeat(np.arange(3, dtype=np.uint8), 10))
    val = (np.full((6, 4, 4, 3), 255, np.uint8), np.repeat(np.arange(3, dtype=np.uint8), 2))
    data = write_ingested(tmp_path / "in", {"train": train, "val": val, "test": val}, CLASSES)
    stats = preprocess.run(PreprocessConfig(channels=1), data, tmp_path / "out")
    grey = preprocess.convert_channels(train[0], 1).astype(np.float64)
    assert stats["image_shape"] == [4, 4, 1]
    assert stats["mean"] == pytest.approx([grey.mean()])
    assert stats["std"] == pytest.approx([grey.std()])
    assert stats["counts"] == {"train": 30, "val": 6, "test": 6, "stream": 0}
    x_val, _ = io.read_split(tmp_path / "out", "val")
    assert (x_val == 255).all()


def test_run_replaces_previous_output_and_tolerates_missing_stream(tmp_path):
    splits = good_splits()
    data = write_ingested(tmp_path / "in", splits, CLASSES)
    for f in data.glob("stream-*.npz"):
        f.unlink()
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    stats = preprocess.run(PreprocessConfig(), data, out)
    assert "stream" not in stats["counts"]
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "stats.json", "test-00000.npz",
                                                      "train-00000.npz", "val-00000.npz"]


def test_run_rejects_mismatched_split_shapes(tmp_path):
    splits = good_splits()
    splits["val"] = make_images(2, 3, (9, 8, 1), seed=9)
    data = write_ingested(tmp_path / "in", splits, CLASSES)
    with pytest.raises(StageError, match="'val'"):
        preprocess.run(PreprocessConfig(), data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_run_missing_train_raises_file_not_found(tmp_path):
    data = write_ingested(tmp_path / "in", good_splits(), CLASSES)
    for f in data.glob("train-*.npz"):
        f.unlink()
    with pytest.raises(FileNotFoundError):
        preprocess.run(PreprocessConfig(), data, tmp_path / "out")

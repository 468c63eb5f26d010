"""Simulated drift: each kind changes what it should (and only that), severity 0 is the identity, batches written
from the stream split are atomic, disjoint across calls (cursor) and reproducible by seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.core.errors import StageError
from pipeline.monitoring import drift, simulate
from tests.helpers import good_splits, make_images, write_ingested

IMAGE_KINDS = ("brightness", "contrast", "noise", "blur")


def textured(n_per_class: int = 30, n_classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mid-grey 12x12 images with a smooth gradient and detail, pixels well inside 0..255 (no clipping)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes, dtype=np.uint8), n_per_class)
    ramp = np.linspace(-30, 30, 12)[None, :, None, None] + np.linspace(-20, 20, 12)[None, None, :, None]
    x = 110 + ramp + rng.normal(0, 12, size=(len(y), 12, 12, 1))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8), y


def _drift(kind, severity, x=None, y=None, seed=0):
    if x is None:
        x, y = textured()
    return simulate.apply_drift(x, y, kind, severity, np.random.default_rng(seed), 3)


# --------------------------------------------------------------------------------------------- apply_drift

@pytest.mark.parametrize("kind", simulate.KINDS)
def test_severity_zero_is_identity(kind):
    x, y = textured()
    xd, yd = _drift(kind, 0.0, x, y)
    assert np.array_equal(xd, x) and np.array_equal(yd, y)
    assert xd.dtype == x.dtype


def test_none_is_identity_at_any_severity():
    x, y = textured()
    xd, yd = _drift("none", 1.0, x, y)
    assert np.array_equal(xd, x) and np.array_equal(yd, y)


@pytest.mark.parametrize("kind", IMAGE_KINDS)
@pytest.mark.parametrize("severity", [0.3, 1.0])
def test_image_kinds_keep_shape_dtype_range_and_labels(kind, severity):
    x, y = textured()
    x[0, 0, 0, 0], x[1, 0, 0, 0] = 0, 255  # extremes must stay in range
    before = x.copy()
    xd, yd = _drift(kind, severity, x, y)
    assert xd.shape == x.shape and xd.dtype == np.uint8
    assert xd.min() >= 0 and xd.max() <= 255
    assert np.array_equal(yd, y)
    assert not np.array_equal(xd, x)
    assert np.array_equal(x, before)  # the input is not modified in place


def test_brightness_adds_an_offset_and_clips():
    x, y = textured()
    xd, _ = _drift("brightness", 0.5, x, y)
    diff = xd.astype(int) - x.astype(int)
    assert np.all(diff[x <= 215] == 40)  # 0.5 * 80, exact where nothing clips
    bright = np.full((1, 4, 4, 1), 250, np.uint8)
    assert _drift("brightness", 1.0, bright, np.zeros(1, np.uint8))[0].max() == 255


def test_contrast_shrinks_spread_around_the_mean():
    x, y = textured()
    xd, _ = _drift("contrast", 0.5, x, y)
    f, fd = drift.image_features(x), drift.image_features(xd)
    assert fd["std"] == pytest.approx(f["std"] * (1 - 0.35), rel=0.03)
    assert fd["mean"] == pytest.approx(f["mean"], abs=0.6)


def test_noise_has_the_configured_sigma_and_keeps_the_mean():
    x, y = textured()
    xd, _ = _drift("noise", 0.5, x, y)
    diff = xd.astype(float) - x.astype(float)
    assert diff.std() == pytest.approx(25.0, rel=0.1)
    assert abs(diff.mean()) < 1.5


def test_blur_lowers_sharpness_more_with_severity_and_keeps_the_mean():
    x, y = textured()
    sharp = drift.image_features(x)["sharpness"].mean()
    low = drift.image_features(_drift("blur", 0.2, x, y)[0])["sharpness"].mean()
    high = drift.image_features(_drift("blur", 1.0, x, y)[0])["sharpness"].mean()
    assert high < low < 0.6 * sharp
    assert drift.image_features(_drift("blur", 1.0, x, y)[0])["mean"] == pytest.approx(
        drift.image_features(x)["mean"], abs=1.0)


@pytest.mark.parametrize("severity", [0.3, 0.6, 1.0])
def test_label_shift_changes_the_mix_but_keeps_pairs_intact(severity):
    x, y = textured(n_per_class=40)
    x[:, 0, 0, 0] = np.arange(len(x))  # tag each image so pairs can be traced
    xd, yd = _drift("label-shift", severity, x, y)
    assert xd.dtype == x.dtype and xd.shape[1:] == x.shape[1:] and len(xd) == len(yd) <= len(x)
    src = xd[:, 0, 0, 0].astype(int)
    assert len(set(src)) == len(src)  # no image twice
    assert np.array_equal(y[src], yd) and np.array_equal(x[src], xd)  # labels still belong to their images
    frac = np.bincount(yd, minlength=3) / len(yd)
    dominant = int(np.argmax(frac))
    assert frac[dominant] == pytest.approx((1 - severity) / 3 + severity, abs=0.02)


def test_label_shift_severity_orders_the_psi():
    x, y = textured(n_per_class=60)
    values = [drift.psi([1 / 3] * 3, np.bincount(_drift("label-shift", s, x, y)[1], minlength=3))
              for s in (0.1, 0.4, 0.8)]
    assert values == sorted(values) and values[0] < 0.1 < 0.2 < values[-1]


def test_noise_is_deterministic_by_seed():
    a, _ = _drift("noise", 0.5, seed=1)
    b, _ = _drift("noise", 0.5, seed=1)
    c, _ = _drift("noise", 0.5, seed=2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_bad_kind_or_severity():
    x, y = textured()
    with pytest.raises(ValueError, match="unknown drift kind 'fog'"):
        _drift("fog", 0.5, x, y)
    with pytest.raises(ValueError, match="severity"):
        _drift("noise", 1.5, x, y)


# --------------------------------------------------------------------------------------------- write_batches

def _stream(n_per_class=40, seed=5):
    x, y = make_images(n_per_class, 3, (6, 6, 1), seed=seed)
    x[:, 0, 0, 0] = np.arange(len(x)) % 256  # tag: image i of the stream
    x[:, 0, 1, 0] = np.arange(len(x)) // 256
    order = np.random.default_rng(seed).permutation(len(x))
    return x[order], y[order], order


def _tags(x):
    return (x[:, 0, 0, 0].astype(int) + 256 * x[:, 0, 1, 0].astype(int)).tolist()


def _read(path: Path):
    with np.load(path) as d:
        return d["x"], d["y"]


def test_write_batches_files_sidecars_and_atomicity(tmp_path):
    x, y, _ = _stream()
    paths = simulate.write_batches(x, y, tmp_path, "none", 0.0, batch_size=25, count=3, seed=1)
    assert len(paths) == 3 and paths == sorted(paths)
    for i, path in enumerate(paths):
        assert path.parent == tmp_path and path.name.startswith("batch-") and path.suffix == ".npz"
        stamp, seq = path.stem.split("-")[1:]
        assert stamp.endswith("Z") and "T" in stamp and seq == f"{i:05d}"
        xb, yb = _read(path)
        assert xb.dtype == np.uint8 and xb.shape == (25, 6, 6, 1) and len(yb) == 25
        meta = json.loads(path.with_suffix(".json").read_text())
        assert meta["kind"] == "none" and meta["severity"] == 0.0 and meta["source"] == "stream"
        assert meta["count"] == 25 and meta["stream_range"] == [25 * i, 25 * (i + 1)]
        assert np.array_equal(xb, x[25 * i:25 * (i + 1)]) and np.array_equal(yb, y[25 * i:25 * (i + 1)])
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_cursor_makes_calls_disjoint_until_the_stream_is_exhausted(tmp_path):
    x, y, _ = _stream()  # 120 images
    first = simulate.write_batches(x, y, tmp_path, "brightness", 0.3, batch_size=50, count=1, seed=1)
    second = simulate.write_batches(x, y, tmp_path, "noise", 0.2, batch_size=50, count=1, seed=1)
    assert first[0] != second[0]
    t1, t2 = _tags(_read(first[0])[0]), _tags(_read(second[0])[0])
    assert not set(t1) & set(t2)
    third = simulate.write_batches(x, y, tmp_path, "none", 0.0, batch_size=50, count=1, seed=1)
    assert len(_read(third[0])[0]) == 20  # the last batch is short: the stream ends inside it
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(StageError, match="exhausted.*stream-cursor.json"):
        simulate.write_batches(x, y, tmp_path, "none", 0.0, batch_size=50, count=1, seed=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    # a different stream (re-ingested) starts from its beginning
    x2, y2, _ = _stream(seed=6)
    fresh = simulate.write_batches(x2, y2, tmp_path, "none", 0.0, batch_size=50, count=1, seed=1)
    assert json.loads(fresh[0].with_suffix(".json").read_text())["stream_range"] == [0, 50]


def test_label_shift_batches_are_full_disjoint_and_shifted(tmp_path):
    x, y, _ = _stream(n_per_class=100)
    paths = simulate.write_batches(x, y, tmp_path, "label-shift", 0.6, batch_size=40, count=2, seed=3, num_classes=3)
    tags = []
    for path in paths:
        xb, yb = _read(path)
        assert len(xb) == 40
        frac = np.bincount(yb, minlength=3) / 40
        assert frac.max() == pytest.approx(0.4 / 3 + 0.6, abs=0.03)
        meta = json.loads(path.with_suffix(".json").read_text())
        assert meta["dominant_classes"] == [int(np.argmax(frac))]
        tags.append(set(_tags(xb)))
        pos = np.flatnonzero(np.isin(_tags(x), list(tags[-1])))
        assert meta["stream_range"][0] <= pos.min() and pos.max() < meta["stream_range"][1]
    assert not tags[0] & tags[1]


def test_write_batches_is_deterministic_by_seed(tmp_path):
    x, y, _ = _stream()
    a = simulate.write_batches(x, y, tmp_path / "a", "noise", 0.5, batch_size=30, count=2, seed=9)
    b = simulate.write_batches(x, y, tmp_path / "b", "noise", 0.5, batch_size=30, count=2, seed=9)
    c = simulate.write_batches(x, y, tmp_path / "c", "noise", 0.5, batch_size=30, count=2, seed=10)
    for pa, pb, pc in zip(a, b, c):
        assert np.array_equal(_read(pa)[0], _read(pb)[0])
        assert not np.array_equal(_read(pa)[0], _read(pc)[0])
    # within one call, batches get different noise (the seed is combined with the stream position)
    d0 = _read(a[0])[0].astype(int) - x[:30].astype(int)
    d1 = _read(a[1])[0].astype(int) - x[30:60].astype(int)
    assert not np.array_equal(d0, d1)


# --------------------------------------------------------------------------------------------- CLI

def test_cli_simulate_writes_into_the_configured_incoming_dir(tmp_path, monkeypatch):
    from pipeline.cli import app

    monkeypatch.chdir(tmp_path)
    write_ingested(tmp_path / "data" / "ingested", good_splits(), ["a", "b", "c"])  # stream: 12 images
    Path("params.yaml").write_text("seed: 3\nmonitor:\n  batch_size: 5\npaths:\n  incoming: inbox\n")
    runner = CliRunner()
    result = runner.invoke(app, ["simulate", "--kind", "blur", "--severity", "0.4", "--batches", "2"])
    assert result.exit_code == 0, result.output
    written = sorted(Path("inbox").glob("batch-*.npz"))
    assert len(written) == 2 and result.output.count("wrote inbox/batch-") == 2
    assert json.loads(written[0].with_suffix(".json").read_text())["kind"] == "blur"

    bad = runner.invoke(app, ["simulate", "--kind", "fog"])
    assert bad.exit_code == 2 and "--kind must be one of" in bad.output
    exhausted = runner.invoke(app, ["simulate", "--batches", "2", "--batch-size", "5"])
    assert exhausted.exit_code == 2 and "exhausted" in exhausted.output
    missing = runner.invoke(app, ["simulate", "--data", "nowhere"])
    assert missing.exit_code == 2 and "nowhere" in missing.output

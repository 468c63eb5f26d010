"""Monitoring loop: batch validation (GX), quarantine, acceptance, the consecutive-bad / cooldown state machine,
idempotent re-processing, and load_accepted - with a tiny real TFLite champion (8x8x1 -> Flatten -> Dense 3)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.core import io
from pipeline.core.config import Params
from pipeline.core.errors import DatasetError, StageError
from pipeline.monitoring import intake as monitor, scoring, simulate
from pipeline.monitoring.state import MonitorState, mark_triggered, should_retrain
from pipeline.stages import ingest
from tests.helpers import write_ingested

CLASSES = ["top", "middle", "bottom"]
SHAPE = (8, 8, 1)
T0 = dt.datetime(2025, 1, 1, 12, 0, tzinfo=dt.timezone.utc)


def band_images(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """8x8 noisy images with a bright two-row band at rows 0-1, 2-3 or 4-5 depending on the class."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat(np.arange(3, dtype=np.uint8), n_per_class))
    x = rng.uniform(40, 90, (len(y), 1, 1, 1)) + rng.normal(0, 12, (len(y), *SHAPE))
    rows = np.arange(8)[None, :, None, None]
    lo = (2 * y.astype(int))[:, None, None, None]
    x = x + ((rows >= lo) & (rows < lo + 2)) * rng.uniform(70, 130, (len(y), 1, 1, 1))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8), y


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """A real .tflite model: Dense weights average the pixels of each class's band, so it is ~100% accurate."""
    import keras

    from pipeline.ml.tflite import TFLiteModel
    from pipeline.stages import compress

    model = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(3)])
    kernel = np.zeros((64, 3), np.float32)
    for k in range(3):
        kernel[16 * k:16 * (k + 1), k] = 1 / 16  # rows 2k, 2k+1 of the flattened 8x8 image
    model.layers[-1].set_weights([kernel, np.zeros(3, np.float32)])
    saved = tmp_path_factory.mktemp("champion") / "saved_model"
    compress.export_saved_model(model, saved)
    return TFLiteModel(compress.convert(saved, "fp32"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    splits = {"train": band_images(100, 1), "val": band_images(30, 2), "test": band_images(30, 3),
              "stream": band_images(60, 4)}
    return write_ingested(tmp_path_factory.mktemp("data") / "ingested", splits, CLASSES)


@pytest.fixture(scope="module")
def profile(data_dir, champion):
    return scoring.build_profile(data_dir, champion, sample=300, seed=0)


@pytest.fixture
def env(tmp_path, champion, profile):
    """Params pointing the monitor at tmp_path, a fresh state, and a `step` helper running check_batch."""
    params = Params.model_validate({
        "paths": {"incoming": str(tmp_path / "incoming"), "accepted": str(tmp_path / "accepted"),
                  "monitor_state": str(tmp_path / "monitor" / "state.json")},
        "monitor": {"consecutive_batches": 2, "cooldown_minutes": 60}})
    state = MonitorState.load(params.paths.monitor_state)

    class Env:
        pass

    e = Env()
    e.params, e.cfg, e.state, e.profile, e.model = params, params.monitor, state, profile, champion
    e.incoming, e.accepted = tmp_path / "incoming", tmp_path / "accepted"
    e.counter = 0

    def drop(x, y, name=None, **extra):
        e.counter += 1
        path = e.incoming / (name or f"batch-{e.counter:03d}.npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, x=x, y=y, **extra)
        return path

    def batch(kind="none", severity=0.0, seed=None, n=20):
        x, y = band_images(n, seed=1000 + e.counter if seed is None else seed)
        return simulate.apply_drift(x, y, kind, severity, np.random.default_rng(0), 3)

    def step(path=None, accuracy=None):
        path = path or monitor.next_batch(e.params)
        return monitor.check_batch(e.params, path, e.model, accuracy, e.profile, e.state)

    e.drop, e.batch, e.step = drop, batch, step
    return e


def _on_disk(e) -> dict:
    return json.loads(Path(e.params.paths.monitor_state).read_text())


# --------------------------------------------------------------------------------------------- profile & validation

def test_champion_and_profile(champion, profile):
    assert champion.input_shape == SHAPE
    json.dumps(profile)
    assert profile["n"] == 300 and profile["num_classes"] == 3 and profile["image_shape"] == [8, 8, 1]
    assert profile["class_names"] == CLASSES and profile["split"] == "train"
    assert profile["accuracy_split"] == "val" and profile["accuracy"] == pytest.approx(1.0)
    assert profile["pred_frac"] == pytest.approx([1 / 3] * 3, abs=0.01)


def test_validate_batch_reuses_the_image_expectations():
    x, y = band_images(10, 5)
    ok = monitor.validate_batch(x, y, CLASSES, SHAPE, source="b.npz")
    assert ok["success"] and ok["reasons"] == [] and ok["rows"] == 30
    assert ok["statistics"]["evaluated_expectations"] == 8

    xf = x.astype(np.float32)
    xf[4, 1, 1, 0] = np.nan
    bad = monitor.validate_batch(xf, y, CLASSES, SHAPE, source="b.npz")
    text = "\n".join(bad["reasons"])
    assert not bad["success"] and text.startswith("b.npz: ")
    assert "expect_column_values_to_be_in_set on images.non_finite" in text and "index=4" in text
    assert "images.dtype" in text

    short = monitor.validate_batch(x, y[:-1], CLASSES, SHAPE, source="b.npz")
    assert not short["success"] and "x has 30 images but y has 29 labels" in short["reasons"][0]
    with pytest.raises(StageError, match="empty incoming batch b.npz"):
        monitor.validate_batch(x[:0], y[:0], CLASSES, SHAPE, source="b.npz")


# --------------------------------------------------------------------------------------------- the loop

def test_clean_batch_is_accepted_and_recorded(env):
    path = env.drop(*env.batch())
    path.with_suffix(".json").write_text('{"kind": "none"}')
    assert monitor.next_batch(env.params) == path
    record = env.step()
    assert record["status"] == "accepted" and record["bad"] is False and record["reasons"] == []
    assert record["assessment"]["accuracy"] == pytest.approx(1.0) and not record["assessment"]["drifted"]
    assert not path.exists() and (env.accepted / path.name).is_file()
    assert (env.accepted / "batch-001.json").is_file()  # the sidecar travels with the batch
    assert monitor.next_batch(env.params) is None
    saved = _on_disk(env)
    assert saved["consecutive_bad"] == 0
    assert saved["processed"][record["sha256"]]["status"] == "accepted"
    assert saved["accepted"] == [{"file": path.name, "sha256": record["sha256"], "count": 60, "at": record["at"]}]
    assert saved["history"][-1]["event"] == "batch"


def test_consecutive_bad_batches_trigger_once_then_cooldown(env):
    for i in (1, 2):
        record = env.step(env.drop(*env.batch("brightness", 0.5)))
        assert record["bad"] and record["assessment"]["drifted"] and record["consecutive_bad"] == i
        assert any("input drift in mean" in r for r in record["reasons"])
        if i == 1:
            assert should_retrain(env.state, env.cfg, T0) == (False, "1 of 2 consecutive drifted/degraded "
                                                              "batches")
    go, why = should_retrain(env.state, env.cfg, T0)
    assert go and "2 consecutive" in why
    mark_triggered(env.state, T0, reason=why)
    env.state.save()
    saved = _on_disk(env)
    assert saved["consecutive_bad"] == 0 and saved["last_trigger_at"] == T0.isoformat()
    assert saved["history"][-1]["event"] == "retrain"
    assert should_retrain(env.state, env.cfg, T0)[0] is False  # idempotent: asking again is a no

    for _ in range(2):
        env.step(env.drop(*env.batch("noise", 0.6)))
    assert env.state.consecutive_bad == 2
    go, why = should_retrain(env.state, env.cfg, T0 + dt.timedelta(minutes=30))
    assert not go and "cooldown" in why and "30.0 of 60 minutes" in why
    assert should_retrain(env.state, env.cfg, T0 + dt.timedelta(minutes=61))[0] is True
    # a naive `now` is read as UTC
    assert should_retrain(env.state, env.cfg, dt.datetime(2025, 1, 1, 12, 30))[0] is False
    # every batch was accepted: drifted data is exactly what retraining needs
    assert len(list(env.accepted.glob("*.npz"))) == 4 and len(env.state.accepted) == 4


def test_a_clean_batch_resets_the_counter(env):
    assert env.step(env.drop(*env.batch("contrast", 0.6)))["consecutive_bad"] == 1
    clean = env.step(env.drop(*env.batch()))
    assert clean["bad"] is False and clean["consecutive_bad"] == 0
    assert env.step(env.drop(*env.batch("blur", 0.5)))["consecutive_bad"] == 1
    assert should_retrain(env.state, env.cfg, T0)[0] is False


def test_label_shift_and_degradation_count_as_bad(env):
    shifted = env.step(env.drop(*env.batch("label-shift", 0.6, n=40)))
    assert shifted["assessment"]["psi"] > env.cfg.psi_threshold and shifted["bad"]
    x, y = env.batch()
    relabelled = env.step(env.drop(x, (y + 1) % 3), accuracy=0.97)  # concept drift: same images, new meaning
    assert relabelled["assessment"]["degraded"] and not relabelled["assessment"]["drifted"]
    assert relabelled["consecutive_bad"] == 2
    assert should_retrain(env.state, env.cfg, T0)[0] is True


def test_reprocessing_is_a_no_op(env):
    x, y = env.batch("brightness", 0.5)
    path = env.drop(x, y)
    first = env.step(path)
    before = json.dumps(_on_disk(env), sort_keys=True)
    again = env.step(path)  # the file was moved away: found in the state by name
    assert again["duplicate"] is True and again["sha256"] == first["sha256"] and again["status"] == "accepted"
    copy = env.drop(x, y, name="copy-of-first.npz")  # the same bytes dropped again under another name
    assert monitor.next_batch(env.params) is None  # already processed content is skipped
    assert env.step(copy)["duplicate"] is True
    assert copy.exists()  # left alone
    assert json.dumps(_on_disk(env), sort_keys=True) == before
    assert env.state.consecutive_bad == 1 and len(env.state.accepted) == 1
    with pytest.raises(StageError, match="never processed"):
        env.step(env.incoming / "no-such-batch.npz")


def test_crash_between_state_save_and_move_is_repaired(env):
    path = env.drop(*env.batch())
    record = env.step(path)
    moved = Path(record["moved_to"])
    moved.rename(path)  # as if the process died after saving the state but before moving the file
    assert monitor.next_batch(env.params) is None
    assert env.step(path)["duplicate"] is True
    assert moved.is_file() and not path.exists()
    assert env.state.consecutive_bad == 0 and len(env.state.processed) == 1


def test_invalid_batch_is_quarantined_with_a_reason_and_not_counted(env):
    env.step(env.drop(*env.batch("brightness", 0.5)))
    assert env.state.consecutive_bad == 1
    x, y = env.batch()
    y = y.copy()
    y[3] = 7
    bad = env.drop(x, y, name="bad-labels.npz")
    record = env.step(bad)
    assert record["status"] == "rejected" and record["bad"] is False
    text = "\n".join(record["reasons"])
    assert "bad-labels.npz" in text
    assert "expect_column_values_to_be_between on images.label" in text and "index=3 label=7" in text
    assert not bad.exists() and (env.incoming / "rejected" / "bad-labels.npz").is_file()
    assert not (env.accepted / "bad-labels.npz").exists()
    assert env.state.consecutive_bad == 1  # neither drift nor a reset
    assert _on_disk(env)["processed"][record["sha256"]]["status"] == "rejected"

    tall = np.random.default_rng(0).integers(20, 236, (4, 9, 8, 1)).astype(np.uint8)
    wrong_shape = env.step(env.drop(tall, np.zeros(4, np.uint8), name="tall.npz"))
    assert wrong_shape["status"] == "rejected" and "images.height" in "\n".join(wrong_shape["reasons"])

    garbage = env.incoming / "garbage.npz"
    garbage.write_bytes(b"not an npz at all")
    unreadable = env.step(garbage)
    assert unreadable["status"] == "rejected" and "unreadable batch" in unreadable["reasons"][0]
    np.savez(env.incoming / "no-labels.npz", x=x)
    no_labels = env.step(env.incoming / "no-labels.npz")
    assert no_labels["status"] == "rejected" and "missing array(s) ['y']" in no_labels["reasons"][0]
    assert env.state.consecutive_bad == 1 and len(env.state.accepted) == 1
    assert monitor.next_batch(env.params) is None  # rejected/ is not incoming


def test_empty_batch_raises_naming_the_file_and_is_quarantined(env):
    path = env.drop(np.zeros((0, *SHAPE), np.uint8), np.zeros(0, np.uint8), name="empty.npz")
    with pytest.raises(StageError, match=r"empty incoming batch .*incoming/empty\.npz"):
        env.step(path)
    assert (env.incoming / "rejected" / "empty.npz").is_file() and monitor.next_batch(env.params) is None
    assert env.state.consecutive_bad == 0 and len(env.state.accepted) == 0


def test_state_round_trip_and_corrupt_state(tmp_path):
    state = MonitorState(consecutive_bad=3, last_trigger_at=T0.isoformat())
    path = state.save(tmp_path / "s" / "state.json")
    assert MonitorState.load(path) == state
    assert MonitorState.load(tmp_path / "missing.json") == MonitorState()
    path.write_text("{not json")
    with pytest.raises(StageError, match="unreadable monitor state"):
        MonitorState.load(path)


# --------------------------------------------------------------------------------------------- ingest side

def test_load_accepted_concatenates_by_name_and_checks(tmp_path):
    assert ingest.load_accepted(tmp_path / "absent") is None
    assert ingest.load_accepted(tmp_path) is None
    a, b = band_images(2, 1), band_images(3, 2)
    np.savez(tmp_path / "batch-2.npz", x=b[0], y=b[1])
    np.savez(tmp_path / "batch-1.npz", x=a[0], y=a[1])
    (tmp_path / "batch-1.json").write_text("{}")
    x, y = ingest.load_accepted(tmp_path)
    assert np.array_equal(x, np.concatenate([a[0], b[0]])) and np.array_equal(y, np.concatenate([a[1], b[1]]))
    assert y.dtype == np.int64

    np.savez(tmp_path / "batch-3.npz", x=np.zeros((2, 9, 8, 1), np.uint8), y=np.zeros(2, np.uint8))
    with pytest.raises(DatasetError, match=r"batch-3\.npz: images are \(9, 8, 1\) but batch-1\.npz has \(8, 8, 1\)"):
        ingest.load_accepted(tmp_path)
    np.savez(tmp_path / "batch-3.npz", x=np.zeros((2, 8, 8, 1), np.float32), y=np.zeros(2, np.uint8))
    with pytest.raises(DatasetError, match="batch-3.npz: expected uint8"):
        ingest.load_accepted(tmp_path)
    np.savez(tmp_path / "batch-3.npz", x=np.zeros((2, 8, 8, 1), np.uint8), y=np.zeros(3, np.uint8))
    with pytest.raises(DatasetError, match="batch-3.npz: expected 2 integer labels"):
        ingest.load_accepted(tmp_path)
    (tmp_path / "batch-3.npz").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="batch-3.npz: unreadable"):
        ingest.load_accepted(tmp_path)


def test_accepted_batches_feed_load_accepted(env):
    for kind in ("none", "brightness"):
        env.step(env.drop(*env.batch(kind, 0.5)))
    x, y = ingest.load_accepted(env.accepted)
    assert len(x) == 120 and x.shape[1:] == SHAPE and set(np.unique(y)) == {0, 1, 2}
    assert io.sha256_file(env.accepted / "batch-001.npz") == env.state.accepted[0]["sha256"]

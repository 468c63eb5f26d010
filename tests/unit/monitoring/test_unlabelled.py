"""Unlabelled monitoring: captured batches (no y) assessed on input statistics, class mix and confidence, labelling
requests, the pending store, labels joining later (`mlops label`, label drops) and the retrain that needs them -
with the tiny real TFLite champion of test_monitor.py (8x8x1 band images, 3 classes)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.core.config import Params
from pipeline.core.errors import StageError
from pipeline.monitoring import captured, labelling, labels, simulate
from pipeline.monitoring.state import MonitorState, mark_triggered, should_retrain
from pipeline.stages import ingest
from tests.unit.monitoring.test_monitor import CLASSES, band_images, champion, data_dir, profile  # noqa: F401

T0 = dt.datetime(2025, 1, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def env(tmp_path, champion, profile):  # noqa: F811 - the imported fixtures
    """Params aimed at tmp_path, a fresh state and helpers: `drop` a captured batch, `step` the monitor on it."""
    params = Params.model_validate({
        "paths": {"incoming": str(tmp_path / "incoming"), "accepted": str(tmp_path / "accepted"),
                  "monitor_state": str(tmp_path / "monitor" / "state.json")},
        "monitor": {"consecutive_batches": 2, "cooldown_minutes": 60, "captured": str(tmp_path / "captured"),
                    "min_new_labels": 5, "label_request_size": 10}})

    class Env:
        pass

    e = Env()
    e.params, e.cfg, e.model, e.profile = params, params.monitor, champion, profile
    e.state = MonitorState.load(params.paths.monitor_state)
    e.truth: dict[str, int] = {}

    def drop(kind="none", severity=0.0, n=20, seed=None, **arrays):
        x, y = band_images(n, seed=2000 + len(e.truth) if seed is None else seed)
        x, y = simulate.apply_drift(x, y, kind, severity, np.random.default_rng(0), 3)
        ids = np.array([f"r{len(e.truth) + i}" for i in range(len(x))], dtype=str)
        e.truth.update(zip(ids.tolist(), y.tolist(), strict=True))
        path = captured.captured_dir(params) / f"capture-20250101T12000{len(e.truth) % 10}Z-{len(e.truth):08x}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, x=x[..., 0], request_id=ids, **arrays)  # (N, H, W): the 3-D form of the format
        return path

    e.drop = drop
    e.step = lambda path: captured.check_captured(params, path, champion, profile, e.state)
    return e


def _fired(record) -> list[str]:
    return record["assessment"]["fired"]


# --------------------------------------------------------------------------------------------- the decision


def test_clean_captured_batch_fires_nothing_and_waits_in_the_pending_store(env):
    path = env.drop()
    record = env.step(path)
    assert record["status"] == "pending" and record["kind"] == "captured" and _fired(record) == []
    names = {s["name"] for s in record["assessment"]["signals"]}
    assert names == {"input.mean", "input.std", "input.sharpness", "class_mix.psi", "confidence.low_share"}
    assert all({"value", "threshold", "fired"} <= set(s) for s in record["assessment"]["signals"])
    assert record["assessment"]["accuracy"] is None and "label_request" not in record
    assert not path.exists() and (Path(env.cfg.captured) / path.name).is_file()
    assert ingest.load_accepted(env.params.paths.accepted) is None  # unlabelled images never reach training
    assert env.state.consecutive_drift == 0 and env.state.open_drift is None


def test_brightness_shift_fires_the_input_signal(env):
    record = env.step(env.drop("brightness", 0.8))
    assert "input.mean" in _fired(record) and record["bad"]
    mean = next(s for s in record["assessment"]["signals"] if s["name"] == "input.mean")
    assert mean["value"] >= mean["threshold"] and mean["p"] < mean["p_threshold"]


def test_label_shift_fires_the_class_mix_signal(env):
    record = env.step(env.drop("label-shift", 1.0, n=60))
    mix = next(s for s in record["assessment"]["signals"] if s["name"] == "class_mix.psi")
    assert mix["fired"] and mix["value"] > mix["threshold"] and mix["chi2_p"] < env.cfg.drift_p_value


def test_low_confidence_fires_with_enough_unsure_answers_only(env):
    unsure = np.tile(np.array([[0.4, 0.35, 0.25]], np.float32), (60, 1))
    record = env.step(env.drop(n=20, probs=unsure, pred=np.zeros(60, np.int64)))
    confidence = next(s for s in record["assessment"]["signals"] if s["name"] == "confidence.low_share")
    assert confidence["fired"] and confidence["share"] == 1.0 and confidence["reference_share"] < 0.1
    one_of_three = np.array([[0.4, 0.35, 0.25], [0.98, 0.01, 0.01], [0.01, 0.98, 0.01]], np.float32)
    few = env.step(env.drop(n=1, probs=one_of_three, pred=np.arange(3)))  # 1 unsure of 3: a share, no evidence
    confidence = next(s for s in few["assessment"]["signals"] if s["name"] == "confidence.low_share")
    assert confidence["value"] > confidence["threshold"] and confidence["p"] > env.cfg.drift_p_value
    assert "confidence.low_share" not in _fired(few)


def test_invalid_captured_batches_are_rejected_with_reasons(env):
    dup = env.drop()
    with np.load(dup) as data:
        np.savez(dup, x=data["x"], request_id=np.full(len(data["x"]), "same"))
    record = env.step(dup)
    assert record["status"] == "rejected" and "request_id repeats" in record["reasons"][0]
    assert (captured.captured_dir(env.params) / "rejected" / dup.name).is_file()
    dark = env.drop()
    np.savez(dark, x=np.zeros((10, 8, 8), np.uint8), request_id=np.array([f"d{i}" for i in range(10)]))
    assert "pixel" in "\n".join(env.step(dark)["reasons"])  # GX: per-image mean / std bounds, no labels needed


# --------------------------------------------------------------------------------------------- labelling request


def test_drift_opens_a_labelling_request_lowest_confidence_first(env):
    probs = np.random.default_rng(0).dirichlet([1, 1, 1], size=60).astype(np.float32)
    record = env.step(env.drop("brightness", 0.8, probs=probs, pred=probs.argmax(1)))
    request = json.loads(Path(record["label_request"]).read_text())
    assert Path(record["label_request"]).parent == Path(env.params.paths.monitor_state).parent / "label-requests"
    images = request["images"]
    assert len(images) == env.cfg.label_request_size
    lowest = sorted(probs.max(1))[:5]
    assert [i["max_prob"] for i in images[:5]] == pytest.approx(lowest, abs=1e-4)
    assert [i["chosen"] for i in images] == ["lowest confidence"] * 5 + ["random sample"] * 5
    assert {i["request_id"] for i in images} <= set(env.truth) and len({i["request_id"] for i in images}) == 10
    assert {s["name"] for s in request["why"]} == set(_fired(record)) and "input.mean" in _fired(record)
    assert env.state.label_requests[-1]["id"] == request["id"]
    assert "input.mean" in labelling.request_markdown([request]) and images[0]["request_id"] in (
        labelling.request_markdown([request]))


# --------------------------------------------------------------------------------------------- labels join


def _pending(env) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in Path(env.cfg.captured).glob("*.npz")}


def test_labels_join_by_csv_and_single_and_become_an_accepted_batch(env, tmp_path):
    env.step(env.drop(n=4))  # 12 images
    ids = sorted(env.truth)
    csv = tmp_path / "labels.csv"
    csv.write_text("request_id,label\n" + "".join(f"{i},{CLASSES[env.truth[i]]}\n" for i in ids[:5]))
    done = labels.apply_labels(env.params, labels.read_label_file(csv), CLASSES, env.state, "labels.csv")
    assert done["labelled"] == 5 and env.state.new_labels == 5
    labels.apply_labels(env.params, [(ids[5], str(env.truth[ids[5]]))], CLASSES, env.state, "command line")
    x, y = ingest.load_accepted(env.params.paths.accepted)
    assert x.shape == (6, 8, 8, 1) and sorted(y.tolist()) == sorted(env.truth[i] for i in ids[:6])
    left = labels.pending_index(Path(env.cfg.captured))
    assert set(left) == set(ids[6:])  # labelled images left the pending store
    again = MonitorState.load(env.params.paths.monitor_state)
    assert again.new_labels == 6 and again.history[-1]["event"] == "labels"


@pytest.mark.parametrize("pairs, message", [
    ([("r0", "top"), ("nope-1", "top"), ("nope-2", "0")], "['nope-1', 'nope-2']"),
    ([("r0", "top"), ("r1", "sideways"), ("r2", "7")], "unknown label(s) [\"r1: 'sideways'\", \"r2: '7'\"]"),
    ([("r0", "top"), ("r0", "bottom")], "['r0'] given two different labels"),
])
def test_unknown_ids_or_labels_are_refused_with_nothing_applied(env, pairs, message):
    env.step(env.drop(n=2))
    before = _pending(env)
    with pytest.raises(StageError) as err:
        labels.apply_labels(env.params, pairs, CLASSES, env.state, "test")
    assert message in str(err.value) and "Nothing was applied" in str(err.value)
    assert _pending(env) == before and not Path(env.params.paths.accepted).exists() and env.state.new_labels == 0


def test_label_drops_are_applied_or_rejected(env):
    env.step(env.drop(n=2))
    drops = labels.labels_dir(env.params)
    drops.mkdir(parents=True)
    (drops / "a.json").write_text(json.dumps({"r0": "top", "r1": 1}))
    (drops / "b.csv").write_text("request_id,label\nr2,unknown-class\n")
    results = labels.apply_label_drops(env.params, CLASSES, env.state)
    assert results[0]["labelled"] == 2 and "unknown label" in results[1]["error"]
    assert (drops / "applied" / "a.json").is_file() and (drops / "rejected" / "b.csv").is_file()
    assert env.state.new_labels == 2


def test_cli_label_file_and_single(env, tmp_path, monkeypatch, data_dir):  # noqa: F811
    env.step(env.drop(n=2))
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(json.dumps({
        "paths": {**env.params.paths.model_dump(), "ingested": str(data_dir)},
        "monitor": {"captured": env.cfg.captured}}))
    Path("labels.csv").write_text("request_id,label\nr0,top\nr1,2\n")
    from pipeline.cli import app

    runner = CliRunner()
    ok = runner.invoke(app, ["label", "--file", "labels.csv", "r2", "middle"])
    assert ok.exit_code == 0 and "labelled 3 captured image(s)" in ok.output, ok.output
    bad = runner.invoke(app, ["label", "r0", "top"])  # already labelled: no longer pending
    assert bad.exit_code == 2 and "['r0']" in bad.output and "Nothing was applied" in bad.output
    assert runner.invoke(app, ["label"]).exit_code == 2


# --------------------------------------------------------------------------------------------- retrain


def test_retrain_needs_drift_and_min_new_labels(env):
    for _ in range(2):
        env.step(env.drop("brightness", 0.8))
    assert env.state.open_drift is not None and "input.mean" in env.state.open_drift["signals"]
    go, why = should_retrain(env.state, env.cfg, T0)
    assert not go and "waits for labels: 0 of 5" in why and "input.mean" in why  # drift alone: no retrain
    ids = sorted(env.truth)[:4]
    labels.apply_labels(env.params, [(i, str(env.truth[i])) for i in ids], CLASSES, env.state, "t")
    assert should_retrain(env.state, env.cfg, T0)[0] is False  # 4 of 5
    labels.apply_labels(env.params, [(sorted(env.truth)[4], "0")], CLASSES, env.state, "t")
    go, why = should_retrain(env.state, env.cfg, T0)
    assert go and "signals: input.mean" in why and "5 captured images labelled" in why
    mark_triggered(env.state, T0, why)
    assert (env.state.new_labels, env.state.open_drift, env.state.consecutive_drift) == (0, None, 0)


def test_labels_without_drift_do_not_retrain(env):
    env.step(env.drop(n=4))
    labels.apply_labels(env.params, [(i, str(v)) for i, v in env.truth.items()], CLASSES, env.state, "t")
    assert env.state.new_labels == 12 and should_retrain(env.state, env.cfg, T0)[0] is False


def test_simulate_to_captured_writes_the_capture_format(tmp_path):
    x, y = band_images(5, seed=1)
    batch = simulate.write_batches(x, y, tmp_path, "none", 0.0, 15, 1, seed=0, num_classes=3)[0]
    path = simulate.to_captured(batch, tmp_path / "captured")
    assert path.name.startswith("capture-") and not batch.exists()
    with np.load(path) as data:
        assert "y" not in data.files and data["request_id"].dtype.kind == "U" and len(set(data["request_id"])) == 15
        assert np.array_equal(data["x"], x) and data["time"].dtype == np.float64
    assert json.loads(path.with_suffix(".json").read_text())["unlabelled"] is True

"""The monitor flow, in-process, on captured (unlabelled) traffic in a local inbox of a copy of the tiny trained
workspace: drift opens labelling requests and waits for labels (no retrain), a label file dropped into
<inbox>/labels/ joins the pending images as an accepted batch, and then the retrain is decided."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.core import io
from pipeline.monitoring import simulate
from pipeline.stages import ingest

pytestmark = pytest.mark.integration


@pytest.fixture
def workspace(tiny_workspace, tmp_path, monkeypatch):
    """A copy of the tiny workspace with small monitor thresholds (the session workspace stays untouched)."""
    root = tmp_path / "ws"
    shutil.copytree(tiny_workspace.root, root, symlinks=True)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["monitor"].update({"consecutive_batches": 2, "min_new_labels": 20, "label_request_size": 10,
                              "cooldown_minutes": 0})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return root


def _capture(root: Path, kind: str, severity: float, n: int, truth: dict) -> None:
    """One captured batch (capture format, no y) of `n` stream images; their true labels go to `truth`."""
    x, y = io.read_split(root / "data/ingested", "stream")
    out = root / "data/incoming"
    batch = simulate.write_batches(x, y, out, kind, severity, n, 1, seed=0, num_classes=10)[0]
    with np.load(batch) as data:
        labels = data["y"]
    path = simulate.to_captured(batch, out / "captured")
    with np.load(path) as data:
        truth.update(zip(data["request_id"].tolist(), labels.tolist(), strict=True))


def test_monitor_flow_on_captured_traffic_waits_for_labels_then_retrains(workspace):
    from prefect.testing.utilities import prefect_test_harness

    from flows.monitor import monitor_flow

    truth: dict[str, int] = {}
    _capture(workspace, "none", 0.0, 20, truth)
    for _ in range(2):
        _capture(workspace, "brightness", 0.8, 20, truth)
    with prefect_test_harness(server_startup_timeout=120):
        first = monitor_flow(project_dir=str(workspace), max_batches=10)
        assert first["decision"] == "ok" and "waits for labels: 0 of 20" in first["reason"], first
        assert [b["kind"] for b in first["batches"]] == ["captured"] * 3
        assert [b["bad"] for b in first["batches"]] == [False, True, True], first["batches"]
        assert len(first["label_requests"]) == 2 and "input.mean" in first["open_drift"]["signals"]
        pending = sorted((workspace / "data/captured").glob("capture-*.npz"))
        assert len(pending) == 3 and not list((workspace / "data/incoming/captured").glob("*.npz"))
        assert ingest.load_accepted(workspace / "data/accepted") is None  # nothing unlabelled is trained on

        requested = json.loads(next((workspace / "data/monitor/label-requests").glob("*.json")).read_text())
        ids = [i["request_id"] for i in requested["images"]]
        assert len(ids) == 10 and set(ids) <= set(truth)
        drop = workspace / "data/incoming/labels"
        drop.mkdir(parents=True)
        chosen = list(truth)[:20]
        (drop / "answers.csv").write_text("request_id,label\n" + "".join(f"{i},{truth[i]}\n" for i in chosen))
        second = monitor_flow(project_dir=str(workspace), max_batches=10)

    assert second["labels"][0]["labelled"] == 20 and (drop / "applied" / "answers.csv").is_file()
    assert second["decision"] == "retrain" and "input.mean" in second["reason"], second
    assert "20 captured images labelled (>= 20)" in second["reason"]
    x, y = ingest.load_accepted(workspace / "data/accepted")
    assert len(x) == 20 and y.tolist() == [truth[i] for i in chosen]
    state = json.loads((workspace / "data/monitor/state.json").read_text())
    assert state["new_labels"] == 0 and state["history"][-1]["event"] == "retrain"  # counters reset by the trigger

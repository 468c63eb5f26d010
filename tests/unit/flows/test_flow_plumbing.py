"""Flow plumbing without a server: the workspace lock and params overrides."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import yaml

from flows.common import WorkspaceBusy, run_streaming, workspace_lock
from pipeline.core.config import ConfigError, update_params

ROOT = Path(__file__).resolve().parents[3]


def test_second_flow_on_a_workspace_refuses_clearly_or_waits(tmp_path):
    with workspace_lock(tmp_path):
        with pytest.raises(WorkspaceBusy, match="workspace busy"):
            with workspace_lock(tmp_path):
                pass
    acquired, released = threading.Event(), threading.Event()

    def holder():
        with workspace_lock(tmp_path):
            acquired.set()
            released.wait(10.0)

    t = threading.Thread(target=holder)
    t.start()
    assert acquired.wait(10.0), "the holder never took the lock"
    with pytest.raises(WorkspaceBusy):  # held: a caller that will not wait is refused
        with workspace_lock(tmp_path):
            pass
    threading.Timer(0.3, released.set).start()
    started = time.monotonic()
    with workspace_lock(tmp_path, wait_seconds=10):  # waits for the holder, then proceeds
        assert released.is_set(), "the lock was granted while the holder still held it"
        assert time.monotonic() - started < 8
    t.join()


def test_update_params_keeps_comments_and_validates(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    params = update_params(path, {"train.epochs": 3, "ingest.max_per_class": 50})
    assert params.train.epochs == 3
    text = path.read_text()
    assert "# fast_net (residual, airbench-style)" in text
    assert yaml.safe_load(text)["ingest"]["max_per_class"] == 50
    before = path.read_text()
    for bad in ({"train.epochs": -1}, {"train.nope": 1}, {"nosection.x": 1}):
        with pytest.raises(ConfigError):
            update_params(path, bad)
        assert path.read_text() == before, "a bad override must leave params.yaml untouched"


def test_run_streaming_reports_the_failing_command(tmp_path):
    lines = []
    assert run_streaming(["python3", "-c", "print('hello')"], tmp_path, lines.append) == "hello"
    assert lines == ["hello"]
    with pytest.raises(RuntimeError, match="exit code 3"):
        run_streaming(["python3", "-c", "import sys; print('boom'); sys.exit(3)"], tmp_path, lines.append)

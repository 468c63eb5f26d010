"""Server metrics in multiprocess mode: a worker that died no longer reports a served version."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
WORKER = """
from pipeline.delivery.metrics import ServerMetrics
m = ServerMetrics()
m.served("model", None, "{version}")
m.observe("/predict", 200, "json", 0.0, images=1)
"""


def _worker(directory: Path, version: str) -> subprocess.Popen:
    """A process that records `version` as served and one request, then waits on stdin (alive until closed)."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONPATH": str(ROOT)}
    code = WORKER.format(version=version) + "import sys; print('ready', flush=True); sys.stdin.read()\n"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_a_dead_workers_version_gauge_is_dropped_but_its_requests_still_count(tmp_path, monkeypatch):
    from pipeline.delivery.metrics import ServerMetrics

    live, dead = _worker(tmp_path, "2"), _worker(tmp_path, "1")
    dead.kill()
    dead.wait()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    try:
        text = ServerMetrics().exposition().decode()
    finally:
        live.communicate("")
    assert 'mlops_serve_model_version{model_name="model",version="2"} 1.0' in text
    assert 'version="1"' not in text  # the dead worker served v1: no longer reported
    assert 'mlops_serve_requests_total{input="json",route="/predict",status="200"} 2.0' in text

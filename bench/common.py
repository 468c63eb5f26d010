"""Benchmark plumbing: throwaway project copies, timed commands, a Prefect server, results files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results.json"

from tests.helpers_project import make_project, run, tool_env  # noqa: E402
from tests.helpers_s3 import free_port  # noqa: E402

__all__ = ["ROOT", "free_port", "make_project", "paths_of", "prefect_server", "run", "save", "timed", "tool_env"]


def paths_of(workspace: Path) -> dict[str, Path]:
    """The `paths:` section of a workspace's params.yaml, as absolute paths under that workspace."""
    from pipeline.core.config import load_params

    paths = load_params(Path(workspace) / "params.yaml").paths
    return {name: Path(workspace) / value for name, value in paths.model_dump().items()}


def timed(cmd: list[str], cwd: Path, env: dict | None = None) -> float:
    """Wall seconds of one command (which must succeed)."""
    started = time.perf_counter()
    run(cmd, cwd, env)
    return time.perf_counter() - started


@contextmanager
def prefect_server():
    """A real Prefect server on a free port for the duration; yields its env."""
    home = Path(tempfile.mkdtemp(prefix="bench-prefect-"))
    port = free_port()
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    }
    with open(home / "server.log", "w") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=tool_env(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{env['PREFECT_API_URL']}/health", timeout=2) as resp:
                    if json.loads(resp.read()) is True:
                        break
            except OSError:
                time.sleep(1)
        else:
            raise RuntimeError(f"Prefect server did not start; see {home / 'server.log'}")
        yield env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def save(section: str, figures: dict) -> None:
    """Merge one benchmark's figures into bench/results.json."""
    data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    data[section] = {
        **figures,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
    }
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps({section: data[section]}, indent=2))

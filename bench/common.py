"""Benchmark plumbing: throwaway project copies, timed commands, a Prefect server, A/B runs, results files.

BENCH_RESULTS=<path> makes `save` write there instead of bench/results.json (quick trial runs of a script).
"""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = Path(os.environ.get("BENCH_RESULTS") or ROOT / "bench" / "results.json")

from tests.helpers_project import make_project, run, tool_env  # noqa: E402
from tests.helpers_s3 import free_port  # noqa: E402

__all__ = [
    "ROOT",
    "alternate",
    "compare",
    "free_port",
    "make_project",
    "paths_of",
    "prefect_server",
    "prepared_data",
    "python_json",
    "run",
    "save",
    "timed",
    "tool_env",
]


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


def alternate(sides: dict[str, Callable[[int], dict]], runs: int) -> list[dict]:
    """Run the sides in turn, `runs` times (A, B, A, B, …); every run's figures tagged with its side and round."""
    out = []
    for i in range(runs):
        for side, measure in sides.items():
            out.append({"side": side, "round": i, **measure(i)})
            print(json.dumps(out[-1]), flush=True)
    return out


def compare(runs: list[dict], key: str, baseline: str, subject: str, digits: int = 2) -> dict:
    """Min and median of `key` on each side, and the ratio of the medians (subject ÷ baseline)."""
    values = {side: [r[key] for r in runs if r["side"] == side] for side in (baseline, subject)}
    ratio = statistics.median(values[subject]) / statistics.median(values[baseline])
    return {
        **{
            side: {"n": len(v), "min": round(min(v), digits), "median": round(statistics.median(v), digits)}
            for side, v in values.items()
        },
        "ratio_of_medians": ratio,  # unrounded: a target is judged on it (the report prints enough digits)
        "ratio": f"median {key} of {subject} ÷ median {key} of {baseline}",
    }


def python_json(args: list[str], cwd: Path = ROOT, timeout: float = 3600) -> dict:
    """Run `python ARGS` in a fresh process (this interpreter); its last stdout line, parsed as JSON."""
    out = run([sys.executable, *args], cwd, timeout=timeout).stdout.strip().splitlines()
    return json.loads(out[-1])


def prepared_data(workdir: Path, max_per_class: int | None = None) -> Path:
    """Fashion-MNIST (all of it, or `max_per_class` images per class) through the real ingest + preprocess."""
    from pipeline.core.config import load_params
    from pipeline.stages import ingest, preprocess

    params = load_params(ROOT / "params.yaml")
    cfg = params.ingest.model_copy(update={"max_per_class": max_per_class, "source": str(ROOT / params.ingest.source)})
    ingest.run(cfg, params.seed, workdir / "ingested", workdir / "cache", accepted_dir=None)
    preprocess.run(params.preprocess, workdir / "ingested", workdir / "prepared")
    return workdir / "prepared"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), so figures from different machines are never read as one run."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def save(section: str, figures: dict) -> None:
    """Merge one benchmark's figures into bench/results.json (or $BENCH_RESULTS)."""
    data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    data[section] = {
        **figures,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
    }
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps({section: data[section]}, indent=2))

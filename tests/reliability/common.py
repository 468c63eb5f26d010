"""Shared builders for the reliability tier (import as `from tests.reliability.common import ...`).

The stage outputs that `mlops register` reads are faked from a tiny real Keras model and a real .tflite
(tests/helpers_s3.build_tiny_tflite), so register / promote / deploy run for real in seconds, without training.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import yaml

from pipeline.core import io
from tests.helpers_project import stop_group
from tests.helpers_s3 import ROOT, build_tiny_tflite

CLASSES = ["cat", "dog", "bird"]
SHAPE = (8, 8, 1)


def bump(tally: dict, key: str, n: int = 1) -> None:
    tally[key] = tally.get(key, 0) + n


# --------------------------------------------------------------------------------------------- running things


def cli(*args) -> tuple[int, str]:
    """`mlops <args>` in-process; (exit code, stdout+stderr, plus the traceback of an unexpected exception)."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    text = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        text += "\n" + "".join(traceback.format_exception(*result.exc_info))
    return result.exit_code, text


def start(cmd: list[str], cwd: Path, env: dict, log: Path) -> subprocess.Popen:
    """Start `cmd` in its own process group, stdout+stderr to `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal exactly `proc`'s process group (started with start_new_session) and reap it."""
    stop_group(proc, sig, grace=30)


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.02,
             proc: subprocess.Popen | None = None, log: Path | None = None):
    """Poll until `predicate()` is truthy; AssertionError (with the log tail) on timeout or if `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise AssertionError(f"process exited ({proc.returncode}) before {what}:\n{tail}")
        time.sleep(interval)
    tail = log.read_text(errors="replace")[-3000:] if log else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{tail}")


def subprocess_env(extra: dict | None = None) -> dict:
    """This interpreter's bin first on PATH, the project importable, quiet TF, no MLflow/Prefect settings leaking."""
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(ROOT)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


# --------------------------------------------------------------------------------------------- checking outputs


def snapshot(path: Path) -> object:
    """None if absent; sha256 of a file; {relative path: sha256} of a directory tree."""
    path = Path(path)
    if not path.exists():
        return None
    if path.is_file():
        return io.sha256_file(path)
    return {str(p.relative_to(path)): io.sha256_file(p) for p in sorted(path.rglob("*")) if p.is_file()}


def temp_leftovers(path: Path) -> list[str]:
    """Hidden temp siblings an atomic write of `path` would leave behind if it were interrupted."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


def write_yaml(path: Path, obj: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    return path


def contains(blob: bytes | str, needle: str) -> bool:
    data = blob.encode() if isinstance(blob, str) else blob
    return needle.encode() in data


# --------------------------------------------------------------------------------------------- a registrable workspace


def build_template(root: Path) -> Path:
    """model.keras (Input 8x8x1 → Flatten → Dense 3) and two different real fp32 .tflite files (v1.tflite, v2.tflite)."""
    import keras

    root = Path(root)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(len(CLASSES))])
    model.save(root / "model.keras")
    build_tiny_tflite(root / "v1.tflite", seed=1, shape=SHAPE, classes=len(CLASSES))
    build_tiny_tflite(root / "v2.tflite", seed=2, shape=SHAPE, classes=len(CLASSES))
    return root


def make_register_workspace(work: Path, template: Path, model_name: str, *, tflite: str = "v1.tflite",
                            blessed: bool = True, accuracy: float = 0.93, params: dict | None = None) -> Path:
    """A directory holding everything `mlops register` reads (as after `dvc repro evaluate`), deploy variant fp32."""
    work = Path(work)
    (work / "models" / "compressed").mkdir(parents=True, exist_ok=True)
    shutil.copy(template / "model.keras", work / "models" / "model.keras")
    shutil.copy(template / tflite, work / "models" / "compressed" / "fp32.tflite")
    checksum = hashlib.sha256(f"{model_name}-{tflite}".encode()).hexdigest()
    io.write_json(work / "data" / "prepared" / "stats.json",
                  {"image_shape": list(SHAPE), "class_names": CLASSES, "mean": [127.0], "std": [60.0]})
    io.write_json(work / "data" / "prepared" / "manifest.json",
                  {"dataset": "fixture", "class_names": CLASSES, "checksum": checksum})
    io.write_json(work / "reports" / "validation.json",
                  {"success": True, "statistics": {"successful_expectations": 13, "evaluated_expectations": 13}})
    reasons = [{"check": "min_accuracy", "passed": blessed, "detail": f"fp32 accuracy {accuracy}"}]
    io.write_json(work / "reports" / "evaluation.json", {
        "accuracy": accuracy, "deploy_variant": "fp32", "blessed": blessed,
        "variants": {"fp32": {"accuracy": accuracy, "latency_ms_batch1": 0.05}},
        "per_class": {c: {"precision": accuracy, "recall": accuracy} for c in CLASSES},
        "champion": None, "decision": {"blessed": blessed, "deploy_variant": "fp32", "reasons": reasons}})
    io.write_json(work / "metrics" / "train.json", {"val_accuracy": accuracy, "epochs": 1})
    io.write_json(work / "metrics" / "compress.json",
                  {"variants": {"fp32": {"bytes": (template / tflite).stat().st_size}}})
    (work / "plots" / "train").mkdir(parents=True, exist_ok=True)
    (work / "plots" / "train" / "history.csv").write_text("epoch,accuracy,loss\n0,0.5,1.0\n1,0.9,0.3\n")
    base = {"seed": 0, "register": {"model_name": model_name, "experiment": f"{model_name}-exp"},
            "evaluate": {"deploy_variant": "fp32"}}
    for key, value in (params or {}).items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    write_yaml(work / "params.yaml", base)
    if not (work / ".git").is_dir():  # a git working copy, as a project is: `mlops commit-run` commits it
        (work / ".gitignore").write_text("/mlflow/\n")
        for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "workspace"]):
            subprocess.run(cmd, cwd=work, check=True, capture_output=True)
    return work


# --------------------------------------------------------------------------------------------- a real MLflow server


def answers_ok(url: str) -> bool:
    """True when `url` answers 200 within 2 s (a server's health check)."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


class MlflowServer:
    """`mlflow server` (sqlite backend, artifacts served by the server from a local folder) in its own process group.

    kill() is `kill -9` of the whole group; start() again reuses the same port, database and artifacts, as a
    supervisor restarting the service would.
    """

    def __init__(self, root: Path):
        from tests.helpers_s3 import free_port

        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> float:
        """Start the server (unless it runs) and wait until /health answers; the seconds it took."""
        import sys

        if self.proc is not None and self.proc.poll() is None:
            return 0.0  # still running: a second server could not bind the port, and this one would be orphaned
        t0 = time.monotonic()
        bin_dir = Path(sys.executable).parent
        cmd = [str(bin_dir / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.root / "artifacts"), "--serve-artifacts",
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        self.starts += 1
        log = self.root / f"server-{self.starts}.log"
        self.proc = start(cmd, self.root, subprocess_env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}), log)

        wait_for(lambda: answers_ok(self.url + "/health"), timeout, "the MLflow server's /health", interval=0.1,
                 proc=self.proc, log=log)
        return time.monotonic() - t0

    def kill(self) -> None:
        """kill -9 the server's process group (idempotent)."""
        if self.proc is not None:
            kill_group(self.proc)

    def client(self):
        """An MlflowClient for this server (tracking and registry)."""
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.url, registry_uri=self.url)


def write_dvc_lock(work: Path, salt: str) -> Path:
    """A dvc.lock with stage entries up to evaluate (what the lineage key hashes), distinct per `salt`."""
    stages = {name: {"cmd": f"python -m pipeline.stages.{name}",
                     "outs": [{"path": f"out/{name}", "md5": hashlib.md5(f"{salt}:{name}".encode()).hexdigest()}]}
              for name in ("ingest", "validate", "preprocess", "train", "compress", "evaluate")}
    return write_yaml(Path(work) / "dvc.lock", {"schema": "2.0", "stages": stages})

"""A throwaway copy of this project as its own git + DVC workspace, for tests that run the real tools."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("pipeline", "flows", "dvc.yaml", ".dvcignore", "prefect.yaml")
RAW_DVC = "data/raw/fashion-mnist.dvc"  # the committed pin of the default ingest.source
# where make_project copies the raw files from: the project's own materialised copy (`make dataset`), else Debian's
FASHION_MNIST = next((p for p in (ROOT / "data/raw/fashion-mnist", Path("/usr/share/datasets/fashion-mnist"))
                      if p.is_dir()), None)



def small_params(model_name: str, experiment: str) -> dict:
    """params.yaml overrides for a quick real run: 100 images per class, 3 epochs of a width-16 net, lenient
    blessing (min accuracy 0.3), registered as `model_name` in MLflow experiment `experiment`."""
    return {
        "ingest": {"max_per_class": 100},
        "train": {"width": 16, "epochs": 3, "batch_size": 32},
        "compress": {"fine_tune_epochs": 1, "representative_samples": 50},
        "evaluate": {"min_accuracy": 0.3, "per_class_floor": 0.0, "max_drop_vs_fp32": 0.1, "latency_runs": 5},
        "register": {"model_name": model_name, "experiment": experiment},
    }

def merge(base: dict, override: dict) -> dict:
    """Deep-merge `override` into a copy of `base`."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(base.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def make_project(tmp_path: Path, override: dict, env: dict | None = None) -> Path:
    """A fresh git + DVC workspace holding this project's pipeline with `override` merged into params.yaml."""
    work = tmp_path / "project"
    work.mkdir(parents=True)
    for item in PROJECT_FILES:
        src, dst = ROOT / item, work / item
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.npz"))
        elif src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    params = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), override)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (work / ".gitignore").write_text("/mlflow/\n/data/monitor/profile-*.json\n/data/incoming/\n")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
        run(cmd, work, env)
    add_data(work, with_raw=params["ingest"]["source"] == RAW_DVC.removesuffix(".dvc"), env=env)
    for cmd in (["git", "add", "-A"], ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        run(cmd, work, env)
    return work


def add_data(work: Path, with_raw: bool, env: dict | None = None) -> None:
    """The DVC-tracked inputs, as in the project: an empty data/accepted/ (`dvc add`) and, when ingest.source is
    the default (`with_raw`), the committed data/raw/fashion-mnist.dvc (+ its .gitignore) materialised from
    FASHION_MNIST by `make dataset`'s script, which checks the bytes against the pin and fills the DVC cache."""
    (work / "data/accepted").mkdir(parents=True)
    run(["dvc", "add", "-q", "data/accepted"], work, env)
    if with_raw:
        assert FASHION_MNIST is not None, "no Fashion-MNIST files to copy: run `make dataset`"
        (work / RAW_DVC).parent.mkdir(parents=True, exist_ok=True)
        for name in (RAW_DVC, "data/raw/.gitignore"):
            shutil.copy(ROOT / name, work / name)
        run([sys.executable, str(ROOT / "infra/local/dataset.py"), "--no-install",
             "--copy-from", str(FASHION_MNIST)], work, env)


def tool_env(extra: dict | None = None) -> dict:
    """This interpreter's bin first on PATH, the project importable, no MLflow settings leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(ROOT)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(extra or {})
    return env


def run(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True,
        timeout: float = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=tool_env(env), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
                             f"{result.stderr[-4000:]}")
    return result


def stop_group(proc: subprocess.Popen, sig: int = 15, grace: float = 20) -> None:
    """Signal `proc`'s process group (started with start_new_session), escalate to SIGKILL, reap it."""
    import signal

    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

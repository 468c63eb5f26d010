"""MLflow wiring: tracking URI (embedded sqlite by default), experiments, alias look-ups, lineage."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

import yaml

from pipeline.core.command import mlflow_unreachable
from pipeline.core.errors import StageError

LOCAL_DIR = Path("mlflow")
EXPERIMENT_COPIES = (".dvc", "tmp", "exps")  # `dvc exp run --temp/--queue` runs stages in a copy under here
_LOST_CONNECTION = {  # requests / urllib3 exceptions of a server that went away (imported only when in use)
    "ConnectionError",
    "ChunkedEncodingError",
    "ConnectTimeout",
    "ReadTimeout",
    "Timeout",
    "ProtocolError",
    "MaxRetryError",
    "NewConnectionError",
}
_project_dir: Path | None = None  # set by use_project(); None: the current directory is the project root


def use_project(root: str | Path) -> None:
    """Find the embedded store under `root` instead of the current directory (flows run without chdir)."""
    global _project_dir
    _project_dir = Path(root).resolve()


def _copied_from(path: Path) -> Path | None:
    """The project `path` lies in a DVC experiment copy of (<project>/.dvc/tmp/exps/...), else None."""
    parts, n = path.parts, len(EXPERIMENT_COPIES)
    for i in range(1, len(parts) - n + 1):
        if parts[i : i + n] == EXPERIMENT_COPIES:
            return Path(*parts[:i])
    return None


def project_root(path: Path, env: Mapping[str, str]) -> Path:
    """The project whose embedded store `path` uses: the original one when `path` is a DVC experiment's temp copy.

    `dvc exp run --temp` and `--queue` run the stages in <project>/.dvc/tmp/exps/<...>/, without the git-ignored
    mlflow/ folder; DVC sets DVC_ROOT to the original project there. Anywhere else `path` is the project root.
    """
    copied_from = _copied_from(path)
    if copied_from is None:
        return path
    dvc_root = env.get("DVC_ROOT")
    if dvc_root and _copied_from(Path(dvc_root)) is None:
        return Path(dvc_root)
    return copied_from


def local_dir() -> Path:
    """The project's MLflow folder: <project root>/mlflow (of the original project inside a DVC experiment copy)."""
    return project_root(_project_dir or Path.cwd(), os.environ) / LOCAL_DIR


def embedded_uri() -> str:
    """The project's own sqlite store, <project root>/mlflow/mlflow.db (git-ignored)."""
    return f"sqlite:///{(local_dir() / 'mlflow.db').resolve()}"


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else the embedded store."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or embedded_uri()
    if uri == embedded_uri():
        local_dir().mkdir(parents=True, exist_ok=True)
    return uri


def client():
    """An MlflowClient bound to the configured tracking and registry URI."""
    import mlflow
    from mlflow import MlflowClient

    # fail within seconds, not minutes, when a tracking server is down (MLflow retries 7 times by default)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def unreachable(exc: BaseException) -> str | None:
    """What to tell the user when `exc`, or an exception that caused it, is a failure to reach the tracking server
    (down, or gone in the middle of an operation); None for anything else.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, Exception) and (message := mlflow_unreachable(seen)) is not None:
            return message
        if isinstance(seen, ConnectionError) or type(seen).__name__ in _LOST_CONNECTION:
            return (
                f"cannot reach the MLflow tracking server at {tracking_uri()} ({type(seen).__name__}). Start it, or "
                "point MLFLOW_TRACKING_URI at a running server, then rerun."
            )
        seen = seen.__cause__ or seen.__context__
    return None


@contextlib.contextmanager
def reachable(action: str) -> Iterator[None]:
    """Turn a lost tracking server (down, or killed mid-operation) into a StageError saying what to do."""
    try:
        yield
    except StageError:
        raise
    except Exception as exc:
        message = unreachable(exc)
        if message is None:
            raise
        raise StageError(
            f"{action}: {message} Nothing half-done is used: the rerun completes or redoes what was interrupted."
        ) from None


def ensure_experiment(name: str) -> str:
    """Experiment id for `name`, creating it; with the embedded store, artifacts go to ./mlflow/artifacts."""
    import mlflow

    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if tracking_uri() == embedded_uri():  # (mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI)
        location = (local_dir() / "artifacts").resolve().as_uri()
    exp_id = c.create_experiment(name, artifact_location=location)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def version_by_alias(model_name: str, alias: str):
    """The ModelVersion holding `alias`, or None when the model or the alias does not exist yet."""
    from mlflow.exceptions import MlflowException

    try:
        return client().get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def download_tflite(model_name: str, version: str, dest: Path) -> Path | None:
    """Download version `version` of `model_name` into dest; the path of its .tflite, None if it has none."""
    import mlflow

    local = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_name}/{version}", dst_path=str(dest))
    )
    found = sorted(local.rglob("*.tflite"))
    return found[0] if found else None


def git_commit() -> dict:
    """Current commit and whether the work tree has uncommitted changes ('unknown' outside git)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout.strip())
        return {"git_commit": sha, "git_dirty": str(dirty).lower()}
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}


def dvc_stage_hashes(lock_path: Path = Path("dvc.lock")) -> dict[str, str]:
    """One short hash per stage in dvc.lock, over its deps/params/outs hashes: identifies the exact inputs."""
    if not lock_path.is_file():
        return {}
    lock = yaml.safe_load(lock_path.read_text()) or {}
    return {
        name: hashlib.sha256(json.dumps(entry, sort_keys=True, default=str).encode()).hexdigest()[:16]
        for name, entry in (lock.get("stages") or {}).items()
    }

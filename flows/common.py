"""Shared flow plumbing: one workspace at a time (the subprocess helpers live in pipeline.core.process)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from pipeline.core.process import run_streaming

__all__ = [
    "WorkspaceBusy",
    "require_shared_mlflow",
    "run_name",
    "run_streaming",
    "workspace_lock",
]


class WorkspaceBusy(RuntimeError):
    """Another flow holds this workspace (DVC locks it repo-wide)."""


@contextlib.contextmanager
def workspace_lock(project_dir: Path, wait_seconds: float = 0.0) -> Iterator[None]:
    """Exclusive lock on the project workspace; waits up to `wait_seconds`, then refuses clearly."""
    lock_path = Path(project_dir) / ".dvc" / "tmp" / "flow.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    fh.seek(0)
                    holder = fh.read().strip() or "another process"
                    raise WorkspaceBusy(
                        f"{project_dir}: workspace busy ({holder}); DVC runs one pipeline per "
                        f"workspace — wait for it or use another clone."
                    ) from None
                time.sleep(2)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)


def require_shared_mlflow() -> None:
    """A run in a throw-away clone must log to a shared MLflow server: the embedded store would vanish with it."""
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        raise RuntimeError(
            "this run works in a fresh clone that is deleted afterwards: set MLFLOW_TRACKING_URI to the shared "
            "MLflow server on the worker (infra/local/stack.sh env), or run without `remote` in a workspace."
        )


def run_name() -> str:
    """This flow run's name plus the start of its id (unique: its commit goes on branch runs/<this>)."""
    from prefect.runtime import flow_run

    return f"{flow_run.name or 'run'}-{str(flow_run.id or '')[:8]}".rstrip("-")

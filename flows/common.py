"""Shared flow plumbing: run DVC commands with output streamed to the Prefect log, one workspace at a time."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path


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


def tool_env() -> dict[str, str]:
    """Environment for subprocesses: this interpreter's bin first on PATH (so `dvc` and `mlops` match)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_streaming(cmd: list[str], cwd: Path, log) -> str:
    """Run `cmd`, sending each output line to `log(line)`; return the output; raise on failure."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if line and not line.startswith(("I0000", "W0000", "WARNING: All log messages")):
            lines.append(line)
            log(line)
    code = proc.wait()
    if code != 0:
        tail = "\n".join(lines[-25:])
        raise RuntimeError(f"`{' '.join(cmd)}` failed with exit code {code}:\n{tail}")
    return "\n".join(lines)


def dvc_remote_configured(project_dir: Path) -> bool:
    """True when the workspace has a DVC remote (so a push has somewhere to go)."""
    out = subprocess.run(["dvc", "remote", "list"], cwd=project_dir, env=tool_env(), capture_output=True, text=True)
    return out.returncode == 0 and bool(out.stdout.strip())

"""Run the project's command-line tools (dvc, git, mlops) with output streamed line by line to a logger."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

_NOISE = ("I0000", "W0000", "WARNING: All log messages")  # TensorFlow/absl start-up chatter


def tool_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for subprocesses: this interpreter's bin first on PATH (so `dvc` and `mlops` match)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


def run_streaming(cmd: list[str], cwd: Path, log: Callable[[str], object], env: dict[str, str] | None = None) -> str:
    """Run `cmd`, sending each output line to `log(line)`; return the output; RuntimeError on failure."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=tool_env(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if line and not line.startswith(_NOISE):
            lines.append(line)
            log(line)
    code = proc.wait()
    if code != 0:
        tail = "\n".join(lines[-25:])
        raise RuntimeError(f"`{' '.join(cmd)}` failed with exit code {code}:\n{tail}")
    return "\n".join(lines)

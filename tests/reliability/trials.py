"""Seeded fault trials: `kill -9` at a uniformly random moment inside an operation, then check invariants.

One trial = start the operation as its own process group, sleep a seeded uniform time drawn from
[0, typical duration], SIGKILL the group (if it is still running), check every invariant, rerun the operation to
completion, check the invariants again. The seed fixes the moment, so a failing trial replays exactly:

    FAULT_TRIALS=1 FAULT_SEED=<seed> pytest tests/reliability -k <operation>

`FAULT_TRIALS` (default 2, what CI runs) trials per operation with seeds FAULT_SEED .. FAULT_SEED+N-1;
`make reliability` runs 20 each. Every trial lands in the session's fault table (printed at the end of the run).
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.reliability.common import kill_group, start

TRIALS = int(os.environ.get("FAULT_TRIALS", "2"))
BASE_SEED = int(os.environ.get("FAULT_SEED", "0"))


def trial_seeds(trials: int = TRIALS, base: int = BASE_SEED) -> list[int]:
    """The seeds one operation's trials use (pass to `pytest.mark.parametrize`)."""
    return list(range(base, base + trials))


def kill_moment(operation: str, seed: int, duration: float) -> float:
    """Seconds after start at which to kill: uniform over [0, duration], fixed by (operation, seed)."""
    return random.Random(f"{operation}:{seed}").uniform(0.0, duration)


@dataclass
class Trial:
    """One operation killed once: when, whether the kill landed, and which invariants held."""

    operation: str
    seed: int
    kill_at: float
    killed: bool = False  # False: the operation had already finished (still checked, counted apart)
    held: dict[str, bool] = field(default_factory=dict)

    def check(self, invariants: Mapping[str, Callable[[], object]], when: str) -> None:
        """Evaluate each invariant (truthy = held); record `<name> (<when>)`; never stops at the first failure."""
        for name, predicate in invariants.items():
            try:
                ok = bool(predicate())
            except Exception:  # noqa: BLE001 - an invariant that cannot even be evaluated did not hold
                ok = False
            self.held[f"{name} ({when})"] = ok

    @property
    def failed(self) -> list[str]:
        return [name for name, ok in self.held.items() if not ok]


def run_and_kill(cmd: list[str], cwd: Path, env: dict, log: Path, kill_at: float) -> bool:
    """Run `cmd` and SIGKILL its process group `kill_at` s after start; True if it was still running then."""
    proc = start(cmd, cwd, env, log)
    deadline = time.monotonic() + kill_at
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        time.sleep(min(0.005, max(0.0, deadline - time.monotonic())))
    if proc.poll() is not None:
        return False
    kill_group(proc)
    return True


def timed(cmd: list[str], cwd: Path, env: dict, log: Path, timeout: float = 600) -> float:
    """Run `cmd` to completion (AssertionError with the log tail unless it exits 0); its wall time in seconds."""
    t0 = time.monotonic()
    rc, output = finish(cmd, cwd, env, log, timeout)
    if rc != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {rc}:\n{output[-3000:]}")
    return time.monotonic() - t0


def record(table: list[Trial], trial: Trial) -> None:
    """Add `trial` to the session's fault table and fail the test if any invariant broke (naming the replay)."""
    table.append(trial)
    if trial.failed:
        raise AssertionError(
            f"{trial.operation} seed {trial.seed} (kill at {trial.kill_at:.3f} s, landed={trial.killed}): "
            f"invariants broken: {trial.failed}; replay: FAULT_TRIALS=1 FAULT_SEED={trial.seed}"
        )


def format_table(table: list[Trial]) -> list[str]:
    """Operation × trials × kills landed × invariants held, with the seed list (for the terminal summary)."""
    lines = ["operation | trials | kills landed | invariant checks held | seeds"]
    for op in dict.fromkeys(t.operation for t in table):
        rows = [t for t in table if t.operation == op]
        checks = sum(len(t.held) for t in rows)
        held = sum(ok for t in rows for ok in t.held.values())
        seeds = ",".join(str(t.seed) for t in rows)
        lines.append(f"{op} | {len(rows)} | {sum(t.killed for t in rows)} | {held}/{checks} | {seeds}")
    return lines


def run_with_fault(cmd: list[str], cwd: Path, env: dict, log: Path, fault_at: float,
                   fault: Callable[[], object], timeout: float = 600) -> tuple[int, bool]:
    """Run `cmd`; `fault_at` s after start call `fault()` (e.g. kill a server it talks to) if `cmd` still runs.

    Waits for `cmd` to exit (killing its group after `timeout`); (its exit code, whether the fault was injected).
    """
    proc = start(cmd, cwd, env, log)
    deadline = time.monotonic() + fault_at
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(min(0.005, max(0.0, deadline - time.monotonic())))
    fired = proc.poll() is None
    if fired:
        fault()
    try:
        return proc.wait(timeout), fired
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise


def finish(cmd: list[str], cwd: Path, env: dict, log: Path, timeout: float = 600) -> tuple[int, str]:
    """Run `cmd` to its end (the rerun after a fault): (exit code, its output), never raising on failure."""
    proc = start(cmd, cwd, env, log)
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise
    return rc, log.read_text(errors="replace")


def measured(cache: dict, operation: str, measure: Callable[[], float]) -> float:
    """`operation`'s uninterrupted duration, measured once (by `measure()`) and kept in `cache` for the session."""
    if operation not in cache:
        cache[operation] = measure()
    return cache[operation]

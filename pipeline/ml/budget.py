"""Size a training schedule to a wall-time budget (`train.budget_minutes`).

A short probe measures this machine's cost of one training step and of validating one image, on a throwaway
copy of the configured model compiled the same way; the number of epochs is then the most whose estimated cost
fits what is left of the budget (at least one). The warmup/cosine schedule is then sized to those epochs, so a
faster machine trains longer within the same budget and a slower one shorter, each with a complete schedule.

The plan is written next to the BackupAndRestore state: a killed run resumes with the epochs it started with.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

PROBE_STEPS = 12  # timed training steps (after a compiling pass of the same steps)
PROBE_VAL_IMAGES = 2048
PLAN_FILE = "budget_plan.json"


@dataclass(frozen=True)
class BudgetPlan:
    """What the probe measured and the epochs it chose."""

    budget_seconds: float
    elapsed_before_fit_seconds: float
    compile_seconds: float
    step_seconds: float
    epoch_fixed_seconds: float
    val_seconds_per_image: float
    epoch_seconds_estimate: float
    epochs: int


def choose_epochs(budget_s: float, spent_s: float, compile_s: float, epoch_s: float) -> int:
    """The most whole epochs of `epoch_s` that fit in `budget_s` after `spent_s` and one compile; at least 1."""
    left = budget_s - spent_s - compile_s
    return max(1, math.floor(left / epoch_s)) if epoch_s > 0 else 1


def _timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def probe(build_compiled: Callable[[int], Any], fit_inputs: dict, batch_size: int) -> dict[str, float]:
    """What one epoch costs on this machine, measured on a throwaway model: compile, per step, per epoch, per image.

    `build_compiled(steps)` returns a freshly built and compiled model (as the stage builds it); `fit_inputs` is
    what the stage passes to fit() (in-memory arrays or PyDatasets). The fixed cost of an epoch (fit's own setup,
    the two BackupAndRestore checkpoint writes) is measured apart from the per-step cost, so tiny epochs are
    estimated as well as large ones.
    """
    model = build_compiled(PROBE_STEPS * 4)
    x, y, x_val, y_val = _probe_arrays(fit_inputs, batch_size)

    def fit(n: int) -> float:
        return _timed(lambda: model.fit(x[:n], y[:n], batch_size=batch_size, epochs=1, verbose=0, shuffle=False))

    first = fit(len(x))
    one_step, full = fit(batch_size), fit(len(x))
    step = max(0.0, full - one_step) / (PROBE_STEPS - 1)
    model.evaluate(x_val, y_val, batch_size=512, verbose=0)  # compile the test step
    val = _timed(lambda: model.evaluate(x_val, y_val, batch_size=512, verbose=0))
    with tempfile.TemporaryDirectory(prefix="budget-probe-") as tmp:
        model.save_weights(Path(tmp) / "a.weights.h5")
        save = _timed(lambda: model.save_weights(Path(tmp) / "b.weights.h5"))
    return {
        "compile_seconds": max(0.0, first - full),
        "step_seconds": step,
        "epoch_fixed_seconds": max(0.0, one_step - step) + 2 * save,
        "val_seconds_per_image": val / len(x_val),
    }


def _probe_arrays(fit_inputs: dict, batch_size: int):
    """PROBE_STEPS batches of training data and up to PROBE_VAL_IMAGES validation images, as arrays."""
    if "y" in fit_inputs:  # in-memory arrays
        n = PROBE_STEPS * batch_size
        x, y = fit_inputs["x"], fit_inputs["y"]
        reps = -(-n // len(x))
        x, y = np.concatenate([x] * reps)[:n], np.concatenate([y] * reps)[:n]
        x_val, y_val = fit_inputs["validation_data"]
        return x, y, x_val[:PROBE_VAL_IMAGES], y_val[:PROBE_VAL_IMAGES]
    batches = fit_inputs["x"]  # a PyDataset of (x, y) batches
    pairs = [batches[i % len(batches)] for i in range(PROBE_STEPS)]
    val = fit_inputs["validation_data"]
    vpairs = [val[i] for i in range(min(len(val), max(1, PROBE_VAL_IMAGES // 512)))]
    return (
        np.concatenate([p[0] for p in pairs]),
        np.concatenate([p[1] for p in pairs]),
        np.concatenate([p[0] for p in vpairs]),
        np.concatenate([p[1] for p in vpairs]),
    )


def plan_epochs(
    budget_minutes: float,
    started: float,
    build_compiled: Callable[[int], Any],
    fit_inputs: dict,
    n_train: int,
    n_val: int,
    batch_size: int,
    backup_dir: Path,
) -> BudgetPlan:
    """The epochs that fit `budget_minutes` from `started` (perf_counter); reused from `backup_dir` on resume."""
    saved = Path(backup_dir) / PLAN_FILE
    if saved.is_file():
        return BudgetPlan(**json.loads(saved.read_text()))
    cost = probe(build_compiled, fit_inputs, batch_size)
    epoch_s = (
        cost["step_seconds"] * -(-n_train // batch_size)
        + cost["epoch_fixed_seconds"]
        + cost["val_seconds_per_image"] * n_val
    )
    spent = time.perf_counter() - started
    budget_s = budget_minutes * 60
    plan = BudgetPlan(
        budget_seconds=budget_s,
        elapsed_before_fit_seconds=spent,
        **cost,
        epoch_seconds_estimate=epoch_s,
        epochs=choose_epochs(budget_s, spent, cost["compile_seconds"], epoch_s),
    )
    saved.write_text(json.dumps(asdict(plan)))
    return plan

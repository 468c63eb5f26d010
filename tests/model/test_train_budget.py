"""Model tier: `train.budget_minutes` sizes the schedule to a wall-time budget (pipeline/ml/budget.py).

The probe's estimate decides the epochs; a bigger budget buys more epochs on the same machine; the stage's wall
time stays near the budget; a resumed run keeps the epochs it planned.
"""

from __future__ import annotations

import json
import time

import pytest

from pipeline.core.config import PreprocessConfig, TrainConfig
from pipeline.ml.budget import PLAN_FILE, choose_epochs
from pipeline.stages import preprocess, train
from tests.helpers import good_splits, write_ingested


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget")
    write_ingested(root / "ingested", good_splits(3, (8, 8, 1)), ["a", "b", "c"])
    preprocess.run(PreprocessConfig(channels=1), root / "ingested", root / "prepared")
    return root / "prepared"


def _train(tmp_path, prepared, minutes: float) -> tuple[dict, float]:
    cfg = TrainConfig(model="fast_net", width=4, epochs=1, batch_size=16, budget_minutes=minutes)
    started = time.perf_counter()
    metrics = train.run(cfg, 0, prepared, tmp_path / "m.keras", tmp_path / "t.json", tmp_path / "p", tmp_path / "b")
    return metrics, time.perf_counter() - started


def test_choose_epochs_fits_whole_epochs_after_what_is_spent():
    assert choose_epochs(60, spent_s=10, compile_s=5, epoch_s=10) == 4
    assert choose_epochs(60, spent_s=10, compile_s=5, epoch_s=9) == 5
    assert choose_epochs(10, spent_s=20, compile_s=5, epoch_s=3) == 1  # over budget already: still one epoch


def test_budget_decides_the_epochs_and_the_wall_time_follows(tmp_path, prepared):
    small, _ = _train(tmp_path / "small", prepared, 0.05)
    large, wall = _train(tmp_path / "large", prepared, 0.5)
    plan = large["budget"]
    assert plan["minutes"] == 0.5 and plan["epochs"] == large["epochs"] == large["epochs_run_this_process"]
    assert large["epochs"] > small["epochs"] >= 1  # ten times the budget buys more epochs
    assert plan["epochs"] == choose_epochs(
        plan["budget_seconds"], plan["elapsed_before_fit_seconds"], plan["compile_seconds"], plan["epoch_seconds_estimate"]
    )
    assert wall <= 0.5 * 60 * 1.5, f"a 30 s budget took {wall:.0f} s"
    assert wall >= 0.5 * 60 * 0.4, f"a 30 s budget used only {wall:.0f} s: the estimate is far off"


def test_a_resumed_run_keeps_its_planned_epochs(tmp_path, prepared):
    backup = tmp_path / "b"
    (backup / "state").mkdir(parents=True)  # a killed run's BackupAndRestore dir (empty: it restores nothing)
    plan = {"budget_seconds": 3.0, "elapsed_before_fit_seconds": 0.1, "compile_seconds": 0.1, "step_seconds": 0.01,
            "epoch_fixed_seconds": 0.0, "val_seconds_per_image": 0.0, "epoch_seconds_estimate": 1.0, "epochs": 3}
    (backup / PLAN_FILE).write_text(json.dumps(plan))
    metrics, _ = _train(tmp_path, prepared, 0.05)
    assert metrics["epochs"] == 3 and metrics["budget"]["epochs"] == 3

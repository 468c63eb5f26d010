"""Blessing decision, McNemar test and per-class metrics (pure functions)."""

import numpy as np
import pytest

from pipeline.core.config import EvaluateConfig
from pipeline.stages.evaluate import confusion, decide, mcnemar, per_class

CFG = EvaluateConfig(min_accuracy=0.9, max_drop_vs_fp32=0.005, per_class_floor=0.6, mcnemar_alpha=0.05)
GOOD_CLASSES = {"a": {"precision": 0.95, "recall": 0.93}, "b": {"precision": 0.9, "recall": 0.91}}


def _champion(acc, p):
    return {"version": "3", "comparable": True, "accuracy": acc, "mcnemar": {"p_value": p}}


@pytest.mark.parametrize(
    "acc, classes, champion, blessed, failing",
    [
        ({"fp32": 0.93, "int8": 0.928}, GOOD_CLASSES, None, True, []),
        ({"fp32": 0.93, "int8": 0.85}, GOOD_CLASSES, None, False, ["min_accuracy", "max_drop_vs_fp32"]),
        ({"fp32": 0.94, "int8": 0.93}, GOOD_CLASSES, None, False, ["max_drop_vs_fp32"]),
        ({"fp32": 0.93, "int8": 0.93}, {**GOOD_CLASSES, "c": {"precision": 0.5, "recall": 0.4}}, None, False,
         ["per_class_floor"]),
        ({"fp32": 0.93, "int8": 0.93}, GOOD_CLASSES, _champion(0.95, 0.001), False, ["vs_champion"]),
        ({"fp32": 0.93, "int8": 0.93}, GOOD_CLASSES, _champion(0.935, 0.4), True, []),
        ({"fp32": 0.93, "int8": 0.93}, GOOD_CLASSES, _champion(0.90, 0.001), True, []),
        ({"fp32": 0.93, "int8": 0.93}, GOOD_CLASSES, {"version": "1", "comparable": False, "reason": "shape"}, True, []),
    ],
)
def test_decide(acc, classes, champion, blessed, failing):
    decision = decide(CFG, acc, classes, champion)
    assert decision["blessed"] is blessed
    assert [r["check"] for r in decision["reasons"] if not r["passed"]] == failing
    assert {r["check"] for r in decision["reasons"]} == {"min_accuracy", "max_drop_vs_fp32", "per_class_floor",
                                                         "vs_champion"}


def test_mcnemar_counts_discordant_pairs():
    y = np.zeros(100, int)
    champion = np.zeros(100, int)
    challenger = np.zeros(100, int)
    challenger[:20] = 1  # challenger wrong on 20 the champion gets right
    result = mcnemar(y, champion, challenger)
    assert result["only_champion_right"] == 20 and result["only_challenger_right"] == 0
    assert result["p_value"] < 1e-4
    assert mcnemar(y, champion, champion)["p_value"] == 1.0


def test_confusion_and_per_class():
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    cm = confusion(y, pred, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    stats = per_class(cm, ["a", "b", "c"])
    assert stats["a"] == {"precision": 0.5, "recall": 0.5}
    assert stats["b"]["precision"] == pytest.approx(2 / 3, abs=1e-4)
    assert stats["c"]["recall"] == 0.5

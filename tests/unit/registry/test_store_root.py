"""The embedded MLflow store of a DVC experiment's temp copy is the original project's, not the copy's."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.registry import store
from pipeline.stages.register import experiment_tags

PROJECT = Path("/work/proj")
TEMP_COPY = PROJECT / ".dvc/tmp/exps/standalone/tmpj5j9rmdc"  # `dvc exp run --temp`
QUEUE_COPY = PROJECT / ".dvc/tmp/exps/tmpa1b2c3d4"  # `dvc exp run --queue` + `dvc queue start`


@pytest.mark.parametrize(
    ("cwd", "env", "expected"),
    [
        (PROJECT, {}, PROJECT),  # `dvc repro`, `mlops register`
        (PROJECT, {"DVC_ROOT": str(PROJECT)}, PROJECT),  # a stage of `dvc repro` / workspace `dvc exp run`
        (PROJECT, {"DVC_ROOT": "/elsewhere"}, PROJECT),  # outside an experiment copy DVC_ROOT changes nothing
        (TEMP_COPY, {"DVC_ROOT": str(PROJECT)}, PROJECT),
        (QUEUE_COPY, {"DVC_ROOT": str(PROJECT)}, PROJECT),
        (TEMP_COPY, {}, PROJECT),  # no DVC_ROOT: the path before .dvc/tmp/exps
        (TEMP_COPY, {"DVC_ROOT": str(TEMP_COPY)}, PROJECT),  # DVC_ROOT naming the copy itself is not trusted
        (PROJECT / "tmp/exps", {}, PROJECT / "tmp/exps"),  # only a .dvc/tmp/exps sequence counts
    ],
)
def test_project_root(cwd, env, expected):
    assert store.project_root(cwd, env) == expected


def test_local_dir_inside_an_experiment_copy_is_the_original_projects(monkeypatch):
    monkeypatch.setattr(store, "_project_dir", QUEUE_COPY)
    monkeypatch.setenv("DVC_ROOT", str(PROJECT))
    assert store.local_dir() == PROJECT / "mlflow"
    assert store.embedded_uri() == f"sqlite:///{PROJECT / 'mlflow/mlflow.db'}"


def test_experiment_tags():
    assert experiment_tags({}) == {"experiment": "none"}
    assert experiment_tags({"DVC_EXP_NAME": "", "DVC_ROOT": "/p"}) == {"experiment": "none"}
    env = {"DVC_EXP_NAME": "wispy-kite", "DVC_EXP_BASELINE_REV": "c784b2c0ffee"}
    assert experiment_tags(env) == {"experiment": "wispy-kite", "experiment.baseline": "c784b2c0ffee"}

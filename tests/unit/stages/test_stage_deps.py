"""dvc.yaml's code deps are the import closure of each stage's own module: no more, no less.

If a stage imported a module that its `deps` miss, editing that module would leave DVC's cache stale ("Data and
pipelines are up to date" while the code changed); a dep it does not import would rerun it for nothing.
"""

from __future__ import annotations

import ast

import pytest
import yaml

from tests.import_closure import ROOT, closure, code_deps, imported_names, is_docstring_only

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
NAMES = ("ingest", "validate", "preprocess", "train", "compress", "evaluate", "register")


def test_dvc_yaml_has_the_seven_stages_in_order():
    assert tuple(STAGES) == NAMES


@pytest.mark.parametrize("stage", NAMES)
def test_code_deps_equal_the_import_closure(stage):
    listed = sorted(d for d in STAGES[stage]["deps"] if d.endswith(".py"))
    expected = code_deps(stage)
    missing, extra = sorted(set(expected) - set(listed)), sorted(set(listed) - set(expected))
    assert not missing and not extra, (
        f"dvc.yaml stage {stage!r}: missing {missing}, not imported {extra}; "
        "print the right lists with `python -m tests.import_closure`")


@pytest.mark.parametrize("stage", NAMES)
def test_each_stage_enters_through_its_own_module(stage):
    assert STAGES[stage]["cmd"].split()[:3] == ["python", "-m", f"pipeline.stages.{stage}"]


@pytest.mark.parametrize("stage", NAMES)
def test_stages_never_import_each_other(stage):
    others = {ROOT / "pipeline" / "stages" / f"{s}.py" for s in NAMES if s != stage}
    assert not closure(ROOT / "pipeline" / "stages" / f"{stage}.py") & others


def test_closure_follows_imports_inside_functions():
    # train imports pipeline.ml.models only inside a function body; the closure must still see it
    train = ROOT / "pipeline" / "stages" / "train.py"
    top_level = {n.module for n in ast.parse(train.read_text()).body if isinstance(n, ast.ImportFrom)}
    assert "pipeline.ml.models" not in top_level
    assert "pipeline.ml.models" in imported_names(train)
    assert "pipeline/ml/models.py" in code_deps("train")


def test_package_inits_left_out_are_docstring_only():
    # a package __init__ runs on every import of its modules: it may stay out of deps only while it has no code
    for init in (ROOT / "pipeline").rglob("__init__.py"):
        assert is_docstring_only(init), f"{init.relative_to(ROOT)} has code: keep it docstring-only or list it"

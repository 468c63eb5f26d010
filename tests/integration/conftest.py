"""Integration tier: one tiny trained workspace with an approved champion, built once per session and shared.

Tests that only read it (load the champion, predict, serve) use it as is; a test that changes it copies what it
needs first. Building it is one `dvc repro` on a small subset, `mlops commit-run` (challenger) and
`mlops promote --approve` (champion): the same commands a user runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers_project import FASHION_MNIST, make_project, run, small_params

_FIGURES = pytest.StashKey[list]()

TINY_MODEL = "tiny-classifier"
TINY = small_params(TINY_MODEL, "tiny")


@dataclass(frozen=True)
class TinyWorkspace:
    """A trained, registered and approved workspace: `root` (git + DVC + embedded MLflow under mlflow/)."""

    root: Path
    model_name: str
    version: int  # the champion's registry version

    @property
    def tracking_uri(self) -> str:
        """The embedded MLflow store of the workspace (what `mlops` uses there)."""
        return f"sqlite:///{self.root / 'mlflow/mlflow.db'}"

    def metrics(self, name: str) -> dict:
        """metrics/<name>.json of the workspace (train, compress, evaluate)."""
        return json.loads((self.root / "metrics" / f"{name}.json").read_text())


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory) -> TinyWorkspace:
    """`dvc repro` on 100 images per class, committed as a run and approved as champion (built once)."""
    assert FASHION_MNIST is not None, "needs the Fashion-MNIST files: run `make dataset`"
    base = tmp_path_factory.mktemp("tiny")
    work = make_project(base, TINY)
    run(["dvc", "repro"], work)
    run(["git", "clone", "-q", "--bare", str(work), str(base / "remote.git")], base)
    run(["git", "remote", "add", "origin", f"file://{base / 'remote.git'}"], work)
    run(["dvc", "remote", "add", "-d", "store", str(base / "dvc-store")], work)
    committed = json.loads(run(["mlops", "commit-run", "--name", "tiny", "--remote", "origin"], work).stdout
                           .splitlines()[-1])
    assert committed["alias"] == "challenger", committed
    run(["mlops", "promote", "--approve", "--by", "ci", "--reason", "tiny workspace fixture"], work)
    record = json.loads((work / "reports/registration.json").read_text())
    return TinyWorkspace(root=work, model_name=TINY_MODEL, version=int(record["version"]))


def pytest_configure(config):
    config.stash[_FIGURES] = []


@pytest.fixture(scope="session")
def figure(pytestconfig):
    """`figure("text")` adds a measured line to the "integration figures" printed at the end of the run."""
    return pytestconfig.stash[_FIGURES].append


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    lines = config.stash.get(_FIGURES, [])
    if lines:
        terminalreporter.write_sep("-", "integration figures")
        for line in lines:
            terminalreporter.write_line(line)

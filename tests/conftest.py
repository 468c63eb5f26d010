"""Shared test setup: quiet TensorFlow, project root importable, an isolated MLflow store per test."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase

pytest_plugins = ["tests.skip_policy"]  # CI never turns green by skipping (tests/expected_skips.txt)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

# Hypothesis profiles for the property-based tests (tests/reliability/test_fuzz_*.py). "ci" (when CI is set, or
# HYPOTHESIS_PROFILE=ci): fixed seed and example count, the same examples on every run, no example database, a
# failure prints its reproduction blob. "dev" (otherwise): more examples, new ones each run, failures remembered in
# .cache/hypothesis (git-ignored) and replayed first. "fuzz" (`make fuzz`): many examples, for a long hunt.
_EXAMPLES_DB = DirectoryBasedExampleDatabase(str(ROOT / ".cache" / "hypothesis"))
settings.register_profile("ci", derandomize=True, max_examples=200, deadline=None, print_blob=True, database=None)
settings.register_profile("dev", max_examples=400, deadline=None, print_blob=True, database=_EXAMPLES_DB)
settings.register_profile("fuzz", max_examples=5000, deadline=None, print_blob=True, database=_EXAMPLES_DB)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """Point MLflow at a fresh sqlite store with a local artifact root under tmp_path."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri


@pytest.fixture(autouse=True)
def _isolate_mlflow_globals():
    """pipeline.registry sets MLflow's process-wide tracking/registry URIs and active experiment (and exports them to
    os.environ, outside monkeypatch's reach): reset them after each test so no later test (here or in another tier)
    is pointed at a deleted store or a stale experiment id."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID")}
    yield
    if "mlflow" in sys.modules:
        import mlflow
        import mlflow.tracking.fluent as fluent

        if mlflow.active_run() is not None:  # a dangling run would capture the next test's logging
            with contextlib.suppress(Exception):
                mlflow.end_run("FAILED")
        fluent._active_experiment_id = None
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value

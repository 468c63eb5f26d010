"""Integration: `dvc exp run --temp` and `--queue` log to the project's own MLflow store, tagged, and move no alias.

DVC runs both in a copy under <project>/.dvc/tmp/exps/ that lacks the git-ignored mlflow/ folder; the runs and
versions must still land in <project>/mlflow/mlflow.db, tagged `experiment=<DVC's name for it>`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.helpers_project import FASHION_MNIST, make_project, run

MODEL = "exp-classifier"
QUEUE_TIMEOUT_S = 900
pytestmark = pytest.mark.integration

# tiny, and blessed whatever the accuracy: the old register stage would have given it `challenger`
TINY = {
    "ingest": {"max_per_class": 50},
    "train": {"width": 16, "epochs": 1, "batch_size": 32},
    "compress": {"fine_tune_epochs": 1, "representative_samples": 20},
    "evaluate": {"min_accuracy": 0.0, "per_class_floor": 0.0, "max_drop_vs_fp32": 1.0, "latency_runs": 5},
    "register": {"model_name": MODEL, "experiment": "exp-it"},
}


def _experiments(work: Path, baseline: str) -> dict[str, int]:
    """{experiment name: its train.epochs} of the experiments on `baseline`, from `dvc exp show --json`."""
    rows = json.loads(run(["dvc", "exp", "show", "--json"], work).stdout)
    found = {}
    for row in rows:
        if row["rev"] != baseline:
            continue
        for exp in row.get("experiments") or []:
            rev = exp["revs"][0]
            found[exp["name"]] = rev["data"]["params"]["params.yaml"]["data"]["train"]["epochs"]
    return found


def _run_queue(work: Path) -> None:
    """`dvc queue start`, then poll `dvc queue status` until nothing is queued or running; fail with the logs."""
    run(["dvc", "queue", "start"], work)
    deadline = time.monotonic() + QUEUE_TIMEOUT_S
    try:
        while True:
            status = run(["dvc", "queue", "status"], work).stdout
            tasks = [line.split() for line in status.splitlines()[1:] if line.strip() and not line.startswith("Worker")]
            if not any(t[-1] in ("Queued", "Running") for t in tasks):
                break
            assert time.monotonic() < deadline, f"queue still busy after {QUEUE_TIMEOUT_S}s:\n{status}"
            time.sleep(5)
        failed = [t[1] for t in tasks if t[-1] != "Success"]
        logs = "\n".join(run(["dvc", "queue", "logs", name], work, check=False).stdout[-4000:] for name in failed)
        assert not failed, f"queued experiments did not succeed:\n{status}\n{logs}"
    finally:
        run(["dvc", "queue", "stop", "--kill"], work, check=False)


def test_temp_and_queued_experiments_log_to_the_project_store_tagged_and_alias_free(tmp_path):
    from mlflow import MlflowClient

    assert FASHION_MNIST is not None, "no Fashion-MNIST files: run `make dataset`"
    started = time.perf_counter()
    work = make_project(tmp_path, TINY)
    baseline = run(["git", "rev-parse", "HEAD"], work).stdout.strip()
    params_before = (work / "params.yaml").read_text()
    lock = work / "dvc.lock"
    lock_before = lock.read_text() if lock.is_file() else None

    run(["dvc", "exp", "run", "--temp", "-S", "train.epochs=2"], work)
    run(["dvc", "exp", "run", "--queue", "-S", "train.epochs=3"], work)
    _run_queue(work)

    experiments = _experiments(work, baseline)
    assert sorted(experiments.values()) == [2, 3], experiments
    db = work / "mlflow/mlflow.db"
    assert db.is_file(), "nothing was logged to the project's own store"
    client = MlflowClient(tracking_uri=f"sqlite:///{db}", registry_uri=f"sqlite:///{db}")

    exp = client.get_experiment_by_name("exp-it")
    assert exp is not None
    assert exp.artifact_location.startswith((work / "mlflow/artifacts").as_uri()), exp.artifact_location
    runs = {r.data.tags.get("experiment"): r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == set(experiments), (set(runs), experiments)
    versions = {v.tags.get("experiment"): v for v in client.search_model_versions(f"name = '{MODEL}'")}
    assert set(versions) == set(experiments), (set(versions), experiments)
    for name, epochs in experiments.items():
        assert runs[name].data.params["train.epochs"] == str(epochs)
        assert runs[name].data.tags["experiment.baseline"] == baseline
        assert versions[name].tags["experiment.baseline"] == baseline
        assert versions[name].run_id == runs[name].info.run_id
        assert versions[name].tags["eval.blessed"] == "true"  # blessed, and still no alias
    assert not client.get_registered_model(MODEL).aliases, client.get_registered_model(MODEL).aliases

    # the workspace itself is untouched: same commit, params.yaml, dvc.lock, nothing to commit
    assert run(["git", "rev-parse", "HEAD"], work).stdout.strip() == baseline
    assert (work / "params.yaml").read_text() == params_before
    assert (lock.read_text() if lock.is_file() else None) == lock_before
    assert run(["git", "status", "--porcelain"], work).stdout == ""
    print(f"experiments test wall time: {time.perf_counter() - started:.0f}s")

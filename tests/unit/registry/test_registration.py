"""Idempotent registration: a complete version of the same lineage key is reused and completed; an incomplete one is
deleted (never reused, never aliased); an interrupted approval is completed exactly once."""

from __future__ import annotations

import json
import subprocess
import sys

import mlflow
import pytest

from pipeline.core import io
from pipeline.core.errors import StageError
from pipeline.registry import promotion, registration, runs, store
from tests.unit.registry.test_promotion import NAME, _version


def _dead_owner() -> dict[str, str]:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    tags = {runs.HOST_TAG: runs.host(), runs.PID_TAG: str(child.pid), runs.START_TAG: runs.process_start(child.pid)}
    child.kill()
    child.wait()
    return tags


def _killed_registration(tmp_path, key: str, *, sha_of: bytes | None = None) -> tuple[str, str]:
    """What a register process killed right after creating the version leaves: the version (key and sha256 tags,
    no source_run_id tag) with its files, its run still RUNNING, owned by a process that is gone."""
    client = store.client()
    experiment = store.ensure_experiment("exp")
    model = tmp_path / f"model-{key}"
    (model / "artifacts").mkdir(parents=True)
    (model / "MLmodel").write_text("flavors: {}\n")
    (model / "artifacts" / "fp32.tflite").write_bytes(b"tflite bytes")
    (model / "artifacts" / "labels.json").write_text(json.dumps(["a", "b"]))
    run = client.create_run(experiment, tags=_dead_owner()).info.run_id
    client.log_artifacts(run, str(model), "classifier")
    if not client.search_registered_models(f"name='{NAME}'"):
        client.create_registered_model(NAME)
    sha = io.sha256_bytes(sha_of if sha_of is not None else b"tflite bytes")
    tags = {"lineage.key": key, "model.sha256": sha, "eval.blessed": "true", "model.deploy_variant": "fp32"}
    mv = client.create_model_version(NAME, f"runs:/{run}/classifier", run, tags=tags)
    return str(mv.version), run


def test_a_killed_registration_is_reused_and_completed(mlflow_store, tmp_path):
    version, run_id = _killed_registration(tmp_path, "k1")
    record = registration.reuse(NAME, "k1")
    assert record is not None and record["reused"] and str(record["version"]) == version
    assert record["run_id"] == run_id and record["sha256"] == io.sha256_bytes(b"tflite bytes")
    client = store.client()
    assert client.get_model_version(NAME, version).tags[registration.SOURCE_RUN_TAG] == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags[registration.REGISTERED_TAG] == version
    assert registration.COMPLETED_TAG in run.data.tags
    assert registration.reuse(NAME, "k2") is None and registration.reuse(NAME, None) is None


def test_an_incomplete_version_is_deleted_not_reused(mlflow_store, tmp_path):
    version, _ = _killed_registration(tmp_path, "k3", sha_of=b"other bytes")  # its .tflite is not what was registered
    assert registration.reuse(NAME, "k3") is None
    assert not store.client().search_model_versions(f"name='{NAME}' and version_number={version}")


def test_copies_of_a_retried_create_request_are_dropped(mlflow_store, tmp_path):
    version, run_id = _killed_registration(tmp_path, "k4")
    client = store.client()
    copy = client.create_model_version(NAME, f"runs:/{run_id}/classifier", run_id, tags={"lineage.key": "k4"})
    other_run = client.create_model_version(NAME, "file:///elsewhere", None, tags={"lineage.key": "k4"})
    assert registration.drop_retried_copies(NAME, "k4", run_id, copy.version) == version
    left = {mv.version for mv in client.search_model_versions(f"name='{NAME}'")}
    assert str(copy.version) not in {str(v) for v in left} and str(other_run.version) in {str(v) for v in left}
    assert registration.drop_retried_copies(NAME, None, run_id, "7") == "7"


def test_an_interrupted_approval_is_completed_once(mlflow_store):
    v1 = _version(0.90, True)
    promotion.approve(NAME, "alice", "first")
    v2 = _version(0.93, True)
    client = store.client()
    # approve(v2) killed after its intent and the champion alias, before the challenger alias and the audit record
    intent = {"id": "d1", "by": "bob", "reason": "better", "at": "2026-01-01T00:00:00Z", "previous": v1}
    client.set_model_version_tag(NAME, v2, promotion.PENDING_TAG, json.dumps(intent))
    client.set_registered_model_alias(NAME, "previous", v1)
    client.set_registered_model_alias(NAME, "champion", v2)
    assert promotion.compare(NAME)["challenger"]["version"] == v2  # what the approver reviews on the rerun
    for decide in (lambda: promotion.reject(NAME, "carol", "no"), lambda: promotion.rollback(NAME, "carol", "no")):
        with pytest.raises(StageError, match=f"interrupted approval of v{v2} is pending"):
            decide()
    with pytest.raises(StageError, match=f"interrupted approval of v{v2}"):
        promotion.approve(NAME, "carol", "other", reviewed=v1)
    record = promotion.approve(NAME, "carol", "rerun")
    assert record["by"] == "bob" and record["id"] == "d1"  # the interrupted decision, not a new one
    assert promotion.aliases(NAME) == {"champion": v2, "challenger": None, "previous": v1}
    assert promotion.PENDING_TAG not in client.get_model_version(NAME, v2).tags
    assert [(h["action"], h["by"]) for h in promotion.history(NAME)] == [("approve", "alice"), ("approve", "bob")]
    with pytest.raises(StageError, match="no 'challenger'"):  # done: nothing left to approve
        promotion.approve(NAME, "carol", "again")


def test_audit_runs_of_dead_processes_are_failed_and_left_out_of_the_history(mlflow_store):
    _version(0.90, True)
    experiment = store.ensure_experiment(f"{NAME}-audit")
    with mlflow.start_run(experiment_id=experiment, tags=_dead_owner()) as stale:
        pass
    store.client().update_run(stale.info.run_id, status="RUNNING")  # as a killed process leaves it
    promotion.approve(NAME, "alice", "first")
    assert store.client().get_run(stale.info.run_id).info.status == "FAILED"
    assert [h["by"] for h in promotion.history(NAME)] == ["alice"]

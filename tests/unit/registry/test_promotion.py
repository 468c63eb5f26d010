"""Promotion: only blessed challengers move; champion/previous/challenger aliases; append-only audit trail."""

from __future__ import annotations

import mlflow
import pytest

from pipeline.registry import promotion as promote

from pipeline.registry import store as registry
from pipeline.core.errors import StageError

NAME = "clf"


def _version(accuracy: float, blessed: bool) -> str:
    """A registered version whose source run carries evaluation metrics, as the register stage leaves it."""
    client = registry.client()
    experiment_id = registry.ensure_experiment("exp")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_metrics({"eval.accuracy": accuracy, "eval.per_class.a.recall": accuracy,
                            "compress.variants.int8.bytes": 1000.0, "eval.variants.int8.latency_ms_batch1": 0.1})
        mlflow.log_dict({"x": 1}, "classifier/MLmodel.json")
    if not client.search_registered_models(f"name='{NAME}'"):
        client.create_registered_model(NAME)
    version = client.create_model_version(NAME, f"runs:/{run.info.run_id}/classifier", run.info.run_id,
                                          tags={"eval.blessed": str(blessed).lower(), "model.deploy_variant": "int8"})
    if blessed:
        client.set_registered_model_alias(NAME, "challenger", version.version)
    return str(version.version)


def test_approve_reject_rollback_with_audit(mlflow_store):
    v1 = _version(0.90, True)
    with pytest.raises(StageError, match="approver.s name"):
        promote.approve(NAME, " ", "no name")
    promote.approve(NAME, "alice", "first model")
    assert promote.aliases(NAME) == {"champion": v1, "challenger": None, "previous": None}

    v2 = _version(0.93, True)
    cmp = promote.compare(NAME)
    assert cmp["diff"]["accuracy"] == pytest.approx(0.03)
    assert "| test accuracy | 93.00% | 90.00% |" in promote.comparison_markdown(cmp)
    record = promote.approve(NAME, "bob", "better")
    assert record["versions"] == {"champion": v2, "previous": v1}
    assert promote.aliases(NAME) == {"champion": v2, "challenger": None, "previous": v1}

    v3 = _version(0.80, True)
    promote.reject(NAME, "carol", "worse on shirts")
    assert promote.aliases(NAME)["challenger"] is None
    client = registry.client()
    assert client.get_model_version(NAME, v3).tags["promotion.decision"] == "rejected"

    promote.rollback(NAME, "dave", "incident 42")
    assert promote.aliases(NAME) == {"champion": v1, "challenger": None, "previous": v2}

    history = promote.history(NAME)
    assert [(h["action"], h["by"]) for h in history] == [("approve", "alice"), ("approve", "bob"),
                                                         ("reject", "carol"), ("rollback", "dave")]
    tags = client.get_model_version(NAME, v2).tags
    assert tags["audit.1.action"] == "approve" and tags["audit.1.by"] == "bob"
    assert tags["audit.2.action"] == "rollback" and tags["audit.2.by"] == "dave"  # appended, not overwritten


def test_unblessed_or_missing_challenger_is_never_promoted(mlflow_store):
    with pytest.raises(StageError, match="no 'challenger'"):
        promote.approve(NAME, "alice", "")
    v = _version(0.5, False)
    registry.client().set_registered_model_alias(NAME, "challenger", v)  # even if someone sets the alias by hand
    with pytest.raises(StageError, match="not blessed"):
        promote.approve(NAME, "alice", "")
    assert promote.aliases(NAME)["champion"] is None
    with pytest.raises(StageError, match="rollback needs"):
        promote.rollback(NAME, "alice", "")


def test_a_decision_applies_only_to_the_reviewed_challenger(mlflow_store):
    """Two runs finished: the approver reviewed v1, but `challenger` moved to v2 meanwhile — nothing changes."""
    v1 = _version(0.90, True)
    reviewed = promote.compare(NAME)["challenger"]["version"]
    v2 = _version(0.91, True)
    for decide in (promote.approve, promote.reject):
        with pytest.raises(StageError, match=f"moved from the reviewed v{v1} to v{v2}"):
            decide(NAME, "erin", "looked good", reviewed)
    assert promote.aliases(NAME) == {"champion": None, "challenger": v2, "previous": None}
    assert promote.history(NAME) == []
    promote.approve(NAME, "erin", "reviewed v2", v2)
    assert promote.aliases(NAME)["champion"] == v2

"""The registry pages tell the story: a version's description states the blessing and its reasons, the deploy
variant's accuracy / size / latency, the data checksum and the lineage commit; its Decisions section only ever grows;
the registered model's description names the champion and its latest decision."""

from __future__ import annotations

import json

import mlflow

from pipeline.registry import describe, promotion, store
from tests.unit.registry.test_promotion import NAME, _version

CHECKSUM = "9f2c1e7ab04d55e3c0ffee0123456789abcdef0123456789abcdef0123456789"
COMMIT = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"


def _facts(blessed: bool, decisions: list[dict] | None = None) -> dict:
    reasons = [
        {"check": "min_accuracy", "passed": blessed, "detail": "int8 accuracy 0.9123 vs minimum 0.95"},
        {"check": "per_class_floor", "passed": True, "detail": "lowest recall 0.7100 (shirt) vs floor 0.5"},
    ]
    summary = {
        "accuracy": 0.9123,
        "size_bytes": 123456.0,
        "latency_ms": 0.0873,
        "data_checksum": CHECKSUM,
        "git_commit": COMMIT,
    }
    return {
        "model_name": "clf",
        "version": "7",
        "summary": summary,
        "deploy_variant": "int8",
        "blessed": str(blessed).lower(),
        "reasons": reasons,
        "failed_checks": None if blessed else "min_accuracy",
        "git": {"ref": "runs/nightly-3", "remote": "origin", "base_commit": "b" * 40, "dirty": "false"},
        "decisions": decisions or [],
    }


def _record(action: str, by: str, reason: str, at: str, **versions: str) -> dict:
    return {"id": f"{action}-{by}", "action": action, "by": by, "at": at, "reason": reason, "versions": versions}


def test_the_version_page_states_every_required_fact():
    text = describe.version_markdown(_facts(blessed=True))
    assert "**Evaluation: blessed** — every check passed." in text
    assert "- passed min_accuracy: int8 accuracy 0.9123 vs minimum 0.95" in text
    assert "- **Accuracy** (int8, test split): 0.9123 (91.23%)" in text
    assert "- **Size** (int8): 123,456 bytes" in text
    assert "- **Batch-1 latency** (int8): 0.0873 ms" in text
    assert f"- **Data checksum**: `{CHECKSUM}`" in text
    assert f"- **Lineage commit**: `{COMMIT}` on `runs/nightly-3` (origin)" in text
    assert text.rstrip().endswith("_No decision yet._")


def test_a_version_not_blessed_states_the_failing_reasons():
    text = describe.version_markdown(_facts(blessed=False))
    assert "**Evaluation: NOT blessed** — failed: min_accuracy." in text
    assert "- FAILED min_accuracy: int8 accuracy 0.9123 vs minimum 0.95" in text
    assert "- passed per_class_floor" in text and "blessed** — every check" not in text
    # without the report (not in the run's artifacts) the failed checks still come from the version's tag
    text = describe.blessing_markdown("false", None, "min_accuracy,per_class_floor")
    assert "**Evaluation: NOT blessed** — failed: min_accuracy, per_class_floor." in text


def test_an_uncommitted_version_names_the_commit_it_started_from():
    facts = _facts(blessed=True)
    facts["git"] = {"ref": None, "remote": None, "base_commit": "b" * 40, "dirty": None}
    facts["summary"]["git_commit"] = None
    assert f"not committed yet (`mlops commit-run`); the run started from `{'b' * 40}`" in describe.version_markdown(
        facts
    )


def test_the_decisions_section_is_append_only():
    first = _record("approve", "alice", "beats v6 on shirts", "2026-12-01T10:00:00+00:00", champion="7", previous="6")
    second = _record(
        "rollback", "bob", "p99 latency *doubled*", "2026-12-02T08:30:00+00:00", champion="6", previous="7"
    )
    one = describe.version_markdown(_facts(True, [first]))
    two = describe.version_markdown(_facts(True, [first, second]))
    lines = two.split(describe.DECISIONS_HEADING)[1].strip().splitlines()
    assert lines == [
        "- 2026-12-01T10:00:00Z approve by alice: beats v6 on shirts (champion v7, previous v6)",
        r"- 2026-12-02T08:30:00Z rollback by bob: p99 latency \*doubled\* (champion v6, previous v7)",
    ]
    assert two.startswith(one)  # the first decision's line (and everything above it) is unchanged


def test_audit_tags_read_back_oldest_first():
    tags = {
        "audit.10.action": "reject",
        "audit.10.by": "c",
        "audit.2.action": "approve",
        "audit.2.by": "a",
        "audit.2.versions": json.dumps({"champion": "2"}),
        "eval.blessed": "true",
    }
    records = describe.audit_records(tags)
    assert [(r["action"], r["by"]) for r in records] == [("approve", "a"), ("reject", "c")]
    assert records[0]["versions"] == {"champion": "2"} and records[1]["versions"] == {}


def test_the_model_page_names_the_champion_and_its_latest_decision():
    approval = _record("approve", "alice", "first model", "2026-12-01T10:00:00+00:00", champion="3")
    text = describe.model_markdown("clf", {"champion": "3", "previous": "2"}, [approval], approval)
    assert "**Champion: v3** ([version page](#/models/clf/versions/3))" in text
    assert "- Its latest decision: 2026-12-01T10:00:00Z approve by alice: first model (champion v3)" in text
    assert "- Other aliases: previous v2" in text
    assert "**No champion yet.**" in describe.model_markdown("clf", {}, [], None)


def test_decisions_are_written_to_the_registry_pages(mlflow_store):
    """approve → reject → rollback through pipeline.registry.promotion: each writes the descriptions."""
    client = store.client()
    v1 = _version(0.90, True)
    promotion.approve(NAME, "alice", "first model")
    v2 = _version(0.93, True)
    promotion.approve(NAME, "bob", "better")
    v3 = _version(0.80, True)
    promotion.reject(NAME, "carol", "worse on shirts")
    promotion.rollback(NAME, "dave", "incident 42")

    def decisions(version: str) -> list[str]:
        text = client.get_model_version(NAME, version).description
        return [line.split(" ", 2)[2] for line in text.split(describe.DECISIONS_HEADING)[1].strip().splitlines()]

    assert decisions(v1) == [
        "approve by alice: first model (champion v1)",
        "approve by bob: better (champion v2, previous v1)",
        "rollback by dave: incident 42 (champion v1, previous v2)",
    ]
    assert decisions(v2) == [
        "approve by bob: better (champion v2, previous v1)",
        "rollback by dave: incident 42 (champion v1, previous v2)",
    ]
    assert decisions(v3) == ["reject by carol: worse on shirts (challenger v3)"]
    page = client.get_model_version(NAME, v2).description
    assert "**Evaluation: blessed**" in page and "0.9300 (93.00%)" in page and "1,000 bytes" in page
    # no evaluation report among these runs' artifacts: said so, not invented
    assert "not in the run's artifacts" in page
    model = client.get_registered_model(NAME).description
    assert f"**Champion: v{v1}**" in model and "Its latest decision:" in model and "rollback by dave" in model
    assert "Latest decision in this registry:" in model and "incident 42" in model


def test_registering_describes_the_version_with_the_reasons_from_its_report(mlflow_store):
    """drop_retried_copies (the register stage's last registry step) writes the description, reasons included."""
    from pipeline.registry import registration

    experiment_id = store.ensure_experiment("exp")
    report = {
        "decision": {
            "blessed": False,
            "deploy_variant": "int8",
            "reasons": [{"check": "min_accuracy", "passed": False, "detail": "int8 accuracy 0.4000 vs minimum 0.5"}],
        }
    }
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_param(describe.REPORT_PARAM, "reports/evaluation.json")
        mlflow.log_metrics({"eval.accuracy": 0.4})
        mlflow.log_dict(report, "reports/evaluation.json")
        mlflow.log_dict({"x": 1}, "classifier/MLmodel.json")
    client = store.client()
    client.create_registered_model(NAME)
    tags = {
        "eval.blessed": "false",
        "model.deploy_variant": "int8",
        "data.manifest_checksum": CHECKSUM,
        "git.base_commit": COMMIT,
        "lineage.key": "k1",
    }
    mv = client.create_model_version(NAME, f"runs:/{run.info.run_id}/classifier", run.info.run_id, tags=tags)
    assert registration.drop_retried_copies(NAME, "k1", run.info.run_id, str(mv.version)) == str(mv.version)
    text = client.get_model_version(NAME, mv.version).description
    assert "**Evaluation: NOT blessed** — failed: min_accuracy." in text
    assert "- FAILED min_accuracy: int8 accuracy 0.4000 vs minimum 0.5" in text
    assert f"`{CHECKSUM}`" in text and f"the run started from `{COMMIT}`" in text

"""Promotion events (flows.notify), the approval automations' files, and the registry side of a timed-out wait
(pipeline.registry.expiry) — without a Prefect server (tests/integration/test_stack.py runs them for real)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import mlflow
import pytest
from prefect.settings import PREFECT_UI_URL, temporary_settings

from flows import automations, notify
from pipeline.registry import expiry, promotion as promote, store as registry

RUN_ID = "0b5e1f5e-58a5-4b0e-9d0a-3f6c1f7f2a11"


@pytest.fixture
def emitted(monkeypatch):
    """The events flows.notify emits (emit_event's keyword arguments, plus the event name)."""
    events: list[dict] = []
    monkeypatch.setattr(notify, "emit_event", lambda event, **kw: events.append({"event": event, **kw}))
    return events


@pytest.fixture
def flow_run(monkeypatch):
    """A current flow run (as FlowRunContext holds it) whose tag updates are recorded."""
    run = SimpleNamespace(id=uuid.UUID(RUN_ID), name="clever-fox", tags=["existing"])
    monkeypatch.setattr(notify, "_current_run", lambda: run)
    monkeypatch.setattr(notify, "_tag", lambda r, tags: setattr(r, "tags", [*r.tags, *tags]))
    return run


def test_awaiting_approval_announces_the_run_its_model_version_link_and_deadline(emitted, flow_run):
    with temporary_settings({PREFECT_UI_URL: "http://prefect.example/"}):
        before = datetime.now(UTC)
        notify.awaiting_approval("clf", "7", 3600)
    (event,) = emitted
    assert event["event"] == "mlops.promotion.awaiting-approval"
    assert event["resource"] == {
        "prefect.resource.id": f"mlops.promotion.{RUN_ID}",
        "prefect.resource.name": "clf v7",
        "mlops.model": "clf",
        "mlops.version": "7",
    }
    assert event["related"] == [
        {
            "prefect.resource.id": f"prefect.flow-run.{RUN_ID}",
            "prefect.resource.role": "flow-run",
            "prefect.resource.name": "clever-fox",
        }
    ]
    payload = event["payload"]
    assert payload["model"] == "clf" and payload["version"] == "7" and payload["flow_run_id"] == RUN_ID
    assert payload["ui_url"] == f"http://prefect.example/runs/flow-run/{RUN_ID}"
    assert payload["timeout_s"] == 3600
    deadline = datetime.fromisoformat(payload["deadline"])
    assert before + timedelta(seconds=3598) <= deadline <= datetime.now(UTC) + timedelta(seconds=3601)
    # the timeout handler finds the awaited version on the run; the tags it had are kept
    assert flow_run.tags[0] == "existing" and notify.awaited(flow_run.tags) == ("clf", "7")


def test_a_resumed_run_does_not_announce_its_wait_twice(emitted, flow_run):
    notify.awaiting_approval("clf", "7", 60)
    notify.awaiting_approval("clf", "7", 60)  # the resumed run replays the flow from the top
    assert len(emitted) == 1


def test_decided_names_the_decision_and_the_run_that_waited(emitted, monkeypatch):
    monkeypatch.setattr(notify, "_current_run", lambda: SimpleNamespace(id="expiry-run", name="x", tags=[]))
    notify.decided("clf", "7", "reject", "timeout", reason="no decision within 60 s", flow_run_id=RUN_ID)
    (event,) = emitted
    assert event["event"] == "mlops.promotion.decided"
    assert event["resource"]["prefect.resource.id"] == f"mlops.promotion.{RUN_ID}"  # pairs with its awaiting event
    assert event["payload"] | {"at": None} == {
        "model": "clf",
        "version": "7",
        "flow_run_id": RUN_ID,
        "ui_url": notify.ui_url(RUN_ID),
        "action": "reject",
        "by": "timeout",
        "reason": "no decision within 60 s",
        "at": None,
    }


def test_outside_a_flow_run_the_events_still_go_out(emitted, monkeypatch):
    monkeypatch.setattr(notify, "_current_run", lambda: None)
    notify.awaiting_approval("clf", "3", 10)
    notify.decided("clf", "3", "approve", "alice")
    assert [e["resource"]["prefect.resource.id"] for e in emitted] == ["mlops.promotion.clf.v3"] * 2
    assert all(e["related"] == [] and e["payload"]["ui_url"] is None for e in emitted)


def test_awaited_reads_model_and_version_from_tags():
    assert notify.awaited(["a", "mlops.model:clf", "mlops.version:12"]) == ("clf", "12")
    assert notify.awaited(["mlops.model:clf"]) is None and notify.awaited(None) is None


# ------------------------------------------------------------------------------------------ automation files


class _Ids:
    def __call__(self, kind: str, name: str) -> str:
        return str(uuid.uuid4())


APPROVAL_FILES = (
    automations.AWAITING_APPROVAL,
    automations.APPROVAL_REMINDER,
    automations.PROMOTION_TIMEOUT,
    automations.PROMOTION_DECIDED,
)


def test_the_approval_automations_load_once_their_references_resolve():
    for path in APPROVAL_FILES:
        assert ("block", automations.APPROVAL_BLOCK) in automations.references(path), path
        loaded = automations.load(path, resolver=_Ids())
        assert loaded.actions and loaded.enabled
    timeout = automations.load(automations.PROMOTION_TIMEOUT, resolver=_Ids())
    assert [a.type for a in timeout.actions] == ["run-deployment", "send-notification"]
    assert timeout.actions[0].parameters == {"flow_run_id": "{{ event.resource.id }}"}
    reminder = automations.load(automations.APPROVAL_REMINDER, resolver=_Ids(), within=30)
    assert reminder.trigger.within == timedelta(seconds=30)
    assert automations.load(automations.APPROVAL_REMINDER, resolver=_Ids()).trigger.within == timedelta(days=1)


def test_without_the_webhook_url_the_approval_automations_are_not_applied():
    resolver = automations.Resolver(client=None, webhook_url=None)
    for path in APPROVAL_FILES:
        with pytest.raises(automations.Unresolved, match=automations.WEBHOOK_ENV):
            automations.load(path, resolver=resolver)
    assert automations.references(automations.ZOMBIE_FLOW_RUNS) == []  # the zombie automation needs nothing


def test_the_approval_block_keeps_the_url_secret_and_posts_subject_and_body():
    block = automations.approval_block("https://hooks.example/T0/SECRET")
    request = block._build_request_args(body="the body", subject="the subject")
    assert request["url"] == "https://hooks.example/T0/SECRET" and request["method"] == "POST"
    assert request["json"] == {"text": "the subject\nthe body", "subject": "the subject", "body": "the body"}
    assert "SECRET" not in block.model_dump_json()  # the URL is a secret value of the block


# ------------------------------------------------------------------------------------------ registry: expiry

NAME = "clf"


def _version(blessed: bool = True) -> str:
    client = registry.client()
    with mlflow.start_run(experiment_id=registry.ensure_experiment("exp")) as run:
        mlflow.log_metrics({"eval.accuracy": 0.9})
    if not client.search_registered_models(f"name='{NAME}'"):
        client.create_registered_model(NAME)
    version = client.create_model_version(
        NAME, f"runs:/{run.info.run_id}/m", run.info.run_id, tags={"eval.blessed": str(blessed).lower()}
    )
    client.set_registered_model_alias(NAME, "challenger", version.version)
    return str(version.version)


def test_a_timed_out_challenger_is_rejected_by_timeout_once(mlflow_store):
    v1 = _version()
    record = expiry.expire(NAME, v1, 60, flow_run="clever-fox")
    assert (record["action"], record["by"]) == ("reject", "timeout")
    assert record["reason"] == "no decision within 60 s (promotion flow run clever-fox)"
    assert promote.aliases(NAME)["challenger"] is None
    assert registry.client().get_model_version(NAME, v1).tags["promotion.decision"] == "rejected"
    assert expiry.expire(NAME, v1, 60) is None  # again (a second automation firing): nothing more
    assert [(h["action"], h["by"], h["versions"]) for h in promote.history(NAME)] == [
        ("reject", "timeout", {"challenger": v1})
    ]


def test_an_expiry_leaves_a_newer_challenger_alone_and_a_decided_version_as_decided(mlflow_store):
    v1 = _version()
    v2 = _version()  # a newer run moved `challenger` while v1's promotion run waited
    record = expiry.expire(NAME, v1, 30)
    assert record["versions"] == {"challenger": v1} and f"'challenger' is v{v2} now" in record["reason"]
    assert promote.aliases(NAME)["challenger"] == v2
    promote.approve(NAME, "alice", "good", reviewed=v2)
    assert expiry.expire(NAME, v2, 30) is None  # approved before its run's deadline: nothing to reject
    assert [(h["action"], h["by"]) for h in promote.history(NAME)] == [("reject", "timeout"), ("approve", "alice")]

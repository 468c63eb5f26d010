"""Promotion events: a run that waits for a human says so, and says when it is decided (nobody waits in silence).

    awaiting_approval(model, version, timeout_s)   → `mlops.promotion.awaiting-approval` (and tags the flow run)
    decided(model, version, action, by)            → `mlops.promotion.decided`

Both events concern the resource `mlops.promotion.<flow run id>` (labels `mlops.model`, `mlops.version`), related
to that flow run (role `flow-run`), so the automations of infra/prefect/automations match them and pair them per
run: a notification when a run starts waiting, a reminder when no decision follows within a window, a note of the
decision. The payload carries model, version, the flow run id, its Prefect UI URL (PREFECT_UI_URL; None when
unknown), the timeout and the deadline (UTC, ISO 8601).

awaiting_approval also tags the flow run `mlops.model:<name>` and `mlops.version:<v>` (what flows.promotion_expiry
reads when the server fails the run at its deadline) and `mlops.awaiting-approval`; a run that is resumed replays
its code from the top, and finding that tag it does not announce the same wait twice.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import get_client
from prefect.context import FlowRunContext
from prefect.events import emit_event
from prefect.logging import get_logger
from prefect.utilities.urls import url_for

AWAITING_APPROVAL = "mlops.promotion.awaiting-approval"
DECIDED = "mlops.promotion.decided"
RESOURCE_PREFIX = "mlops.promotion."
WAITING_TAG = "mlops.awaiting-approval"
MODEL_TAG = "mlops.model:"
VERSION_TAG = "mlops.version:"

logger = get_logger(__name__)


def _current_run() -> Any | None:
    """The flow run this code runs in (prefect.client.schemas.objects.FlowRun), or None outside one."""
    context = FlowRunContext.get()
    return context.flow_run if context is not None else None


def resource_id(model_name: str, version: str, flow_run_id: str | None) -> str:
    """`mlops.promotion.<flow run id>`; outside a flow run `mlops.promotion.<model>.v<version>`."""
    return f"{RESOURCE_PREFIX}{flow_run_id}" if flow_run_id else f"{RESOURCE_PREFIX}{model_name}.v{version}"


def ui_url(flow_run_id: str | None) -> str | None:
    """The run's page in the Prefect UI (PREFECT_UI_URL, by default derived from PREFECT_API_URL), or None."""
    return url_for("flow-run", obj_id=flow_run_id) if flow_run_id else None


def _emit(
    event: str, model_name: str, version: str, flow_run_id: str | None, flow_run_name: str | None, payload: dict
) -> None:
    resource = {
        "prefect.resource.id": resource_id(model_name, version, flow_run_id),
        "prefect.resource.name": f"{model_name} v{version}",
        "mlops.model": model_name,
        "mlops.version": version,
    }
    related = []
    if flow_run_id:
        run = {"prefect.resource.id": f"prefect.flow-run.{flow_run_id}", "prefect.resource.role": "flow-run"}
        if flow_run_name:
            run["prefect.resource.name"] = flow_run_name
        related.append(run)
    body = {"model": model_name, "version": version, "flow_run_id": flow_run_id, "ui_url": ui_url(flow_run_id)}
    emit_event(event, resource=resource, related=related, payload={**body, **payload})


def _tag(flow_run: Any, tags: list[str]) -> None:
    """Add `tags` to the flow run (kept: what is already there)."""
    merged = list(dict.fromkeys([*(flow_run.tags or []), *tags]))
    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run.id, tags=merged)


def awaiting_approval(model_name: str, version: str, timeout_s: int) -> None:
    """Announce that this run waits for a decision on `model_name` v`version` for at most `timeout_s` seconds."""
    version = str(version)
    run = _current_run()
    if run is not None and WAITING_TAG in (run.tags or []):
        logger.debug("flow run %s already announced its wait (resumed run); no second event", run.id)
        return
    deadline = datetime.now(UTC) + timedelta(seconds=int(timeout_s))
    if run is not None:
        try:
            _tag(run, [WAITING_TAG, f"{MODEL_TAG}{model_name}", f"{VERSION_TAG}{version}"])
        except Exception:  # the event matters more than the tags: announce anyway
            logger.exception("could not tag flow run %s with the awaited model version", run.id)
    _emit(
        AWAITING_APPROVAL,
        model_name,
        version,
        str(run.id) if run is not None else None,
        run.name if run is not None else None,
        {"timeout_s": int(timeout_s), "deadline": deadline.isoformat(timespec="seconds")},
    )


def decided(
    model_name: str,
    version: str,
    action: str,
    by: str,
    *,
    reason: str = "",
    flow_run_id: str | None = None,
    flow_run_name: str | None = None,
) -> None:
    """Announce the decision on `model_name` v`version` (`action` approve/reject, by whom). `flow_run_id`: the
    promotion run that waited (default: the current run) — the timeout handler decides for a run that is gone.
    """
    run = _current_run() if flow_run_id is None else None
    if run is not None:
        flow_run_id, flow_run_name = str(run.id), run.name
    payload = {"action": action, "by": by, "reason": reason, "at": datetime.now(UTC).isoformat(timespec="seconds")}
    _emit(DECIDED, model_name, str(version), flow_run_id, flow_run_name, payload)


def awaited(tags: list[str] | None) -> tuple[str, str] | None:
    """(model, version) a flow run's tags name (awaiting_approval tagged it), or None."""
    found = {}
    for tag in tags or []:
        for prefix in (MODEL_TAG, VERSION_TAG):
            if tag.startswith(prefix):
                found[prefix] = tag.removeprefix(prefix)
    if MODEL_TAG in found and VERSION_TAG in found:
        return found[MODEL_TAG], found[VERSION_TAG]
    return None

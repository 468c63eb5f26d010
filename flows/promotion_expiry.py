"""Promotion expiry: the approval wait of a promotion run timed out → an audited rejection, and everyone is told.

The Prefect server fails a paused/suspended run whose timeout passed ("The flow was paused and never resumed.",
prefect/server/services/pause_expirations.py). The automation infra/prefect/automations/promotion-timeout.yaml
runs this flow's deployment (`promotion-expiry`, prefect.yaml) with that run's id: it reads which model version
the run waited on (the tags flows.notify.awaiting_approval set), records the rejection by "timeout"
(pipeline.registry.expiry) and emits `mlops.promotion.decided` for the expired run, which the decision
automation turns into a notification.
"""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

from prefect import flow, get_client, get_run_logger

from flows import notify

EXPIRED_MESSAGE = "The flow was paused and never resumed"  # the server's message (pause_expirations.py)


def _default_timeout() -> int:
    """promotion_flow's default `timeout_s` (a run started without that parameter waited that long)."""
    import inspect

    from flows.promotion import promotion_flow

    return int(inspect.signature(promotion_flow.fn).parameters["timeout_s"].default)


@flow(name="promotion-expiry", log_prints=True)
def promotion_expiry_flow(flow_run_id: str, project_dir: str = ".", remote: str | None = None) -> dict:
    """Reject (audited, by "timeout") the version the expired promotion run `flow_run_id` waited on.

    `flow_run_id`: the run's id, or the `prefect.flow-run.<id>` resource id of its Failed event. `remote`: taken
    like every deployment of prefect.yaml takes it, unused (an expiry writes to the registry only, not to git).
    """
    from pipeline.registry import expiry, store

    logger = get_run_logger()
    run_id = flow_run_id.removeprefix("prefect.flow-run.")
    with get_client(sync_client=True) as client:
        expired = client.read_flow_run(UUID(run_id))
    message = (expired.state.message or "") if expired.state else ""
    if expired.state is None or not expired.state.is_failed() or not message.startswith(EXPIRED_MESSAGE):
        logger.info("flow run %s did not expire waiting (%s: %s); nothing to do", run_id, expired.state, message)
        return {"expired": False, "flow_run_id": run_id}
    awaited = notify.awaited(expired.tags)
    if awaited is None:
        raise ValueError(f"flow run {run_id} ({expired.name}) expired, but its tags name no awaited model version")
    model_name, version = awaited
    timeout_s = int(expired.parameters.get("timeout_s") or _default_timeout())
    store.use_project(Path(project_dir).resolve())
    record = expiry.expire(model_name, version, timeout_s, flow_run=expired.name)
    if record is None:
        logger.info("%s v%s was decided before the deadline; nothing recorded", model_name, version)
        return {"expired": True, "flow_run_id": run_id, "audit": None}
    logger.warning("%s v%s rejected: %s", model_name, version, record["reason"])
    notify.decided(
        model_name,
        version,
        record["action"],
        record["by"],
        reason=record["reason"],
        flow_run_id=run_id,
        flow_run_name=expired.name,
    )
    return {"expired": True, "flow_run_id": run_id, "audit": record}


if __name__ == "__main__":
    import sys

    promotion_expiry_flow(sys.argv[1])

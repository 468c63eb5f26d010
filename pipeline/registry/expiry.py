"""A promotion wait that timed out is an audited rejection, never a silent expiry.

When the Prefect server fails a promotion run whose approval wait passed its deadline, flows.promotion_expiry
calls `expire`: the version the run waited on is rejected by "timeout" with the reason "no decision within N s",
through the same audit trail as a human decision (pipeline.registry.audit).

- the version is still `challenger`: promotion.reject (tag `promotion.decision=rejected`, `challenger` withdrawn);
- `challenger` has moved on (a newer run) or was withdrawn: the newer challenger is left alone; the expired
  version itself gets the rejection tag and its own audit record;
- the version was already decided (an approve/reject of it is in the audit trail, e.g. `mlops promote` answered
  outside the run): nothing is written (None).
Running it again for the same expiry finds its own record and writes nothing.
"""

from __future__ import annotations

import uuid

from pipeline.core import clock
from pipeline.registry import audit, promotion, store
from pipeline.registry.aliases import CHALLENGER

BY = "timeout"


def reason(timeout_s: int | float, flow_run: str | None = None) -> str:
    """The recorded reason of a timed-out wait."""
    where = f" (promotion flow run {flow_run})" if flow_run else ""
    return f"no decision within {int(timeout_s)} s{where}"


def decision_on(model_name: str, version: str) -> dict | None:
    """The audit record that decided `version` (approved as champion, or rejected as challenger), else None."""
    for record in reversed(audit.history(model_name)):
        versions = record.get("versions") or {}
        if (record["action"] == "approve" and str(versions.get("champion")) == str(version)) or (
            record["action"] == "reject" and str(versions.get("challenger")) == str(version)
        ):
            return record
    return None


@store.reachable("rejection after the approval timeout")
def expire(model_name: str, version: str, timeout_s: int | float, flow_run: str | None = None) -> dict | None:
    """Reject `version` by "timeout" (audited) unless it was already decided; the audit record, or None."""
    version = str(version)
    if decision_on(model_name, version) is not None:
        return None
    why = reason(timeout_s, flow_run)
    challenger = store.version_by_alias(model_name, CHALLENGER)
    if challenger is not None and str(challenger.version) == version:
        return promotion.reject(model_name, BY, why, reviewed=version)
    client = store.client()
    audit.fail_dangling(client, model_name)
    client.set_model_version_tag(model_name, version, "promotion.decision", "rejected")
    if challenger is not None:
        why = f"{why}; '{CHALLENGER}' is v{challenger.version} now, left as is"
    record = {
        "id": uuid.uuid4().hex,
        "action": "reject",
        "by": BY,
        "at": clock.utc_iso(),
        "reason": why,
        "versions": {"challenger": version},
        "diff": {},
    }
    return audit.append(client, model_name, record)

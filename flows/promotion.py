"""Promotion flow: show the approver challenger vs champion, wait for a decision, then promote and deploy.

The wait is answerable in the Prefect UI (the form rendered from `Approval`: every field required, checked by the
server before the run resumes) or programmatically through Prefect's input API; `mlops promote --approve/--reject`
is the same decision from a shell. Under a deployment the run is *suspended* while it waits: its process exits and
no worker is held; the decision reschedules it and it replays from the top — the review it showed and every
earlier answer are read back from the run's own inputs (keys `mlops-review`, `approval-<n>`), so it decides on
exactly the version the approver reviewed. An answer the flow cannot apply (e.g. an approver who may not approve)
is refused with the reason shown in the next form; it never fails the run.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.flow_runs import pause_flow_run, suspend_flow_run
from prefect.input import RunInput, create_flow_run_input, read_flow_run_input
from pydantic import Field

from flows import notify

if TYPE_CHECKING:
    from pipeline.core.config import Params

REVIEW_KEY = "mlops-review"  # the flow run input holding the review the approver was shown (and the deadline)


class Approval(RunInput):
    """The approver's answer: the Prefect UI renders it as the form of the waiting run; every field is required."""

    decision: Literal["approve", "reject"] = Field(
        title="Decision", description="approve: this version becomes champion and is deployed; reject: withdrawn"
    )
    approver: str = Field(
        title="Your name", min_length=1, max_length=200, pattern=r"\S", description="recorded in the audit trail"
    )
    reason: str = Field(
        title="Reason", min_length=1, max_length=2000, pattern=r"\S", description="recorded in the audit trail"
    )

    @property
    def approve(self) -> bool:
        """True for an approval."""
        return self.decision == "approve"


def _project(project_dir: str) -> tuple[Path, Params]:
    """The resolved project root and its params.yaml; the registry's embedded store is found under it."""
    from pipeline.core.config import load_params
    from pipeline.registry import store

    root = Path(project_dir).resolve()
    store.use_project(root)
    return root, load_params(root / "params.yaml")


@task(cache_policy=NO_CACHE)
def review(model_name: str) -> dict:
    """Compare challenger and champion; publish the table as the `promotion-review` artifact."""
    from pipeline.registry import promotion

    cmp = promotion.compare(model_name)
    create_markdown_artifact(
        promotion.comparison_markdown(cmp),
        key="promotion-review",
        description=f"{model_name}: challenger v{cmp['challenger']['version']}",
    )
    return cmp


@task(cache_policy=NO_CACHE)
def decide(model_name: str, decision: Approval, reviewed: str) -> dict:
    """Carry out the approver's decision (audited) on the version they reviewed (refused if `challenger` moved)."""
    from pipeline.registry import promotion

    if decision.approve:
        return promotion.approve(model_name, decision.approver, decision.reason, reviewed)
    return promotion.reject(model_name, decision.approver, decision.reason, reviewed)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 30])
def champion_branch(project_dir: str, model_name: str, remote: str | None) -> str | None:
    """Move git branch `champion` to the approved version's run commit (pushed to `remote` when given)."""
    from pipeline.versioning.commit import move_champion_branch

    return move_champion_branch(Path(project_dir), model_name, remote, get_run_logger().info)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 30])
def deploy(project_dir: str) -> dict:
    """Publish the new champion to S3 (safe to retry: the pointer flips only after a complete upload)."""
    from pipeline.delivery import releases

    _, params = _project(project_dir)
    return releases.publish_champion(params)


def _wait_for(form: type[Approval], timeout_s: int, key: str) -> Approval:
    """Suspend the run for the form's answer (a deployment's run: no process waits), else pause in-process."""
    context = FlowRunContext.get()
    if context is not None and context.flow_run is not None and context.flow_run.deployment_id is not None:
        return suspend_flow_run(wait_for_input=form, timeout=timeout_s, key=key)
    return pause_flow_run(wait_for_input=form, timeout=timeout_s, key=key)


def _refusal(model_name: str, answer: Approval) -> str | None:
    """Why an answer cannot be applied (shown in the next form), or None. The form (and `Approval`'s own
    validation) already refused empty or blank fields; with MLflow auth on, the name must be an MLflow user allowed
    to manage the model (a refusal is audited).
    """
    from pipeline.registry import approvers

    try:
        approvers.check_approver(model_name, answer.approver)
    except approvers.ApproverRefused as exc:
        return str(exc)
    return None


def ask(
    model_name: str, version: str, deadline: float, refuse: Callable[[str, Approval], str | None] = _refusal
) -> Approval:
    """The first answer to "Approve <model> v<version>?" that `refuse` lets through; a refused one re-asks, saying
    why. Each ask is its own pause key (approval-1, approval-2, …): a resumed run replays the earlier answers.
    """
    note = ""
    for attempt in itertools.count(1):
        remaining = max(1, int(deadline - time.time()))
        form = Approval.with_initial_data(description=f"{note}Approve {model_name} v{version} as champion?")
        answer = _wait_for(form, remaining, key=f"approval-{attempt}")
        refused = read_flow_run_input(f"refused-{attempt}")  # decided before this run was resumed: not again
        if refused is None:
            refused = refuse(model_name, answer)
            if refused is None:
                return answer
            create_flow_run_input(f"refused-{attempt}", refused)
        get_run_logger().warning("answer %d not applied: %s; asking again", attempt, refused)
        note = f"Not applied: {refused}. "
    raise AssertionError("unreachable")


def reviewed_once(model_name: str, timeout_s: int) -> dict:
    """The review this run shows its approver: computed (and published) the first time, read back on a resume."""
    replayed = read_flow_run_input(REVIEW_KEY)
    if isinstance(replayed, dict):
        return replayed
    comparison: dict = review(model_name)
    stored = {"comparison": comparison, "deadline": time.time() + timeout_s, "timeout_s": timeout_s}
    if comparison["challenger"]["blessed"]:
        create_flow_run_input(REVIEW_KEY, stored)
    return {**stored, "first": True}


@flow(name="promotion", log_prints=True)
def promotion_flow(
    model_name: str | None = None,
    project_dir: str = ".",
    timeout_s: int = 7 * 24 * 3600,
    publish: bool = True,
    remote: str | None = None,
) -> dict:
    """Review → wait for approval (suspended) → approve (champion alias + `champion` branch move, audited,
    deployed) or reject (tagged). `remote`: the git remote whose `champion` branch follows (the deployments: origin).
    """
    root, params = _project(project_dir)
    model_name = model_name or params.register_.model_name
    logger = get_run_logger()
    stored = reviewed_once(model_name, timeout_s)
    cmp, version = stored["comparison"], str(stored["comparison"]["challenger"]["version"])
    if not cmp["challenger"]["blessed"]:
        logger.warning("challenger v%s is not blessed; nothing to approve", version)
        return {"decision": "not-blessed", "comparison": cmp}
    logger.info("waiting for approval of %s v%s", model_name, version)
    if stored.get("first"):  # announced once, not again when the decision resumes (replays) the run
        notify.awaiting_approval(model_name, version, stored["timeout_s"])
    decision = ask(model_name, version, stored["deadline"])
    record = decide(model_name, decision, version)
    notify.decided(model_name, version, record["action"], record["by"], reason=record["reason"])
    result = {"decision": record["action"], "audit": record}
    if decision.approve:
        result["champion_commit"] = champion_branch(str(root), model_name, remote)
    if decision.approve and publish:
        result["deployment"] = deploy(str(root))
    return result


if __name__ == "__main__":
    promotion_flow()

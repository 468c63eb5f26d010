"""Promotion flow: show the approver challenger vs champion, pause for a decision, then promote and deploy.

The pause is answerable in the Prefect UI (a form from `Approval`) or programmatically through Prefect's
input API; `mlops promote --approve/--reject` is the same decision from a shell.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

if TYPE_CHECKING:
    from pipeline.core.config import Params


class Approval(RunInput):
    """The approver's answer: the Prefect UI renders it as the form of the paused run."""

    approve: bool
    approver: str
    reason: str = ""


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


@flow(name="promotion", log_prints=True)
def promotion_flow(
    model_name: str | None = None,
    project_dir: str = ".",
    timeout_s: int = 7 * 24 * 3600,
    publish: bool = True,
    remote: str | None = None,
) -> dict:
    """Review → pause for approval → approve (champion alias + `champion` branch move, audited, deployed) or
    reject (tagged). `remote`: the git remote whose `champion` branch follows (the deployments: origin).
    """
    root, params = _project(project_dir)
    model_name = model_name or params.register_.model_name
    logger = get_run_logger()
    cmp = review(model_name)
    if not cmp["challenger"]["blessed"]:
        logger.warning("challenger v%s is not blessed; nothing to approve", cmp["challenger"]["version"])
        return {"decision": "not-blessed", "comparison": cmp}
    logger.info("waiting for approval of %s v%s", model_name, cmp["challenger"]["version"])
    decision = pause_flow_run(
        wait_for_input=Approval.with_initial_data(
            description=f"Approve {model_name} v{cmp['challenger']['version']} as champion?",
            approve=False,
            approver="",
            reason="",
        ),
        timeout=timeout_s,
    )
    record = decide(model_name, decision, str(cmp["challenger"]["version"]))
    result = {"decision": record["action"], "audit": record}
    if decision.approve:
        result["champion_commit"] = champion_branch(str(root), model_name, remote)
    if decision.approve and publish:
        result["deployment"] = deploy(str(root))
    return result


if __name__ == "__main__":
    promotion_flow()

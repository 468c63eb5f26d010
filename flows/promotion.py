"""Promotion flow: show the approver challenger vs champion, pause for a decision, then promote and deploy.

The pause is answerable in the Prefect UI (a form from `Approval`) or programmatically through Prefect's
input API; `mlops promote --approve/--reject` is the same decision from a shell.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput


class Approval(RunInput):
    approve: bool
    approver: str
    reason: str = ""


@task(cache_policy=NO_CACHE)
def review(model_name: str) -> dict:
    from pipeline.registry import promotion as promote

    cmp = promote.compare(model_name)
    create_markdown_artifact(promote.comparison_markdown(cmp), key="promotion-review",
                             description=f"{model_name}: challenger v{cmp['challenger']['version']}")
    return cmp


@task(cache_policy=NO_CACHE)
def decide(model_name: str, decision: Approval) -> dict:
    from pipeline.registry import promotion as promote

    if decision.approve:
        return promote.approve(model_name, decision.approver, decision.reason)
    return promote.reject(model_name, decision.approver, decision.reason)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 30])
def deploy(project_dir: str) -> dict:
    """Publish the new champion to S3 (safe to retry: the pointer flips only after a complete upload)."""
    import os

    from pipeline.delivery import releases as deployer
    from pipeline.core.config import load_params

    os.chdir(project_dir)
    return deployer.publish_champion(load_params("params.yaml"))


@flow(name="promotion", log_prints=True)
def promotion_flow(model_name: str | None = None, project_dir: str = ".", timeout_s: int = 7 * 24 * 3600,
                   publish: bool = True) -> dict:
    """Review → pause for approval → approve (champion moves, audited, deployed) or reject (tagged)."""
    import os

    from pipeline.core.config import load_params

    os.chdir(project_dir)
    model_name = model_name or load_params("params.yaml").register_.model_name
    logger = get_run_logger()
    cmp = review(model_name)
    if not cmp["challenger"]["blessed"]:
        logger.warning(f"challenger v{cmp['challenger']['version']} is not blessed; nothing to approve")
        return {"decision": "not-blessed", "comparison": cmp}
    logger.info(f"waiting for approval of {model_name} v{cmp['challenger']['version']}")
    decision = pause_flow_run(wait_for_input=Approval.with_initial_data(
        description=f"Approve {model_name} v{cmp['challenger']['version']} as champion?",
        approve=False, approver="", reason=""), timeout=timeout_s)
    record = decide(model_name, decision)
    result = {"decision": record["action"], "audit": record}
    if decision.approve and publish:
        result["deployment"] = deploy(os.getcwd())
    return result


if __name__ == "__main__":
    promotion_flow()

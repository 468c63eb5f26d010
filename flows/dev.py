"""One-command local mode for development: serve all three flows from this process (no worker, no deploy).

python -m flows.dev          # needs PREFECT_API_URL (e.g. `prefect server start`); Ctrl-C stops and pauses
"""

from __future__ import annotations

import os
from typing import cast

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from flows.monitor import monitor_flow
from flows.promotion import promotion_flow
from flows.training import training_flow


def main() -> None:
    """Serve training (weekly), monitor (hourly) and promotion from this process until interrupted."""
    project_dir = os.environ.get("MLOPS_PROJECT_DIR", os.getcwd())
    params = {"project_dir": project_dir}
    deployments = [
        training_flow.to_deployment(name="training", cron="0 3 * * 1", parameters=params),
        monitor_flow.to_deployment(name="monitor", cron="0 * * * *", parameters=params),
        promotion_flow.to_deployment(name="promotion", parameters=params),
    ]
    serve(*cast("list[RunnerDeployment]", deployments))  # synchronous calls: deployments, not coroutines


if __name__ == "__main__":
    main()

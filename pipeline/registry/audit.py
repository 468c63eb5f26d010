"""The promotion audit trail: append-only, and idempotent per decision (a rerun after a crash completes it once).

Each decision has an id. It is recorded (1) as `audit.<n>.*` tags on each model version involved — `audit.<n>.id`
first, so a rerun finds the index it was writing and never opens a second one — and (2) as one FINISHED MLflow run
in the `<model>-audit` experiment tagged `audit.id` and holding `audit.json`. Runs left behind by a killed process
are marked FAILED (pipeline.registry.runs) and are not part of the history.
"""

from __future__ import annotations

import json
import re

from pipeline.registry import runs, store

ID_TAG = "audit.id"
_INDEX = re.compile(r"audit\.(\d+)\.")


def experiment(model_name: str) -> str:
    """The name of `model_name`'s audit experiment."""
    return f"{model_name}-audit"


def _index(version, decision_id: str) -> int:
    """The `audit.<n>` index of `decision_id` on this version (its own, when a rerun resumes it), else the next."""
    tags = version.tags or {}
    for key, value in tags.items():
        m = _INDEX.match(key)
        if m and key == f"audit.{m.group(1)}.id" and value == decision_id:
            return int(m.group(1))
    return max((int(m.group(1)) for k in tags if (m := _INDEX.match(k))), default=0) + 1


def _tag_versions(client, model_name: str, record: dict) -> None:
    for version_no in sorted({v for v in record["versions"].values() if v is not None}):
        n = _index(client.get_model_version(model_name, version_no), record["id"])
        for key, value in (
            ("id", record["id"]),
            ("action", record["action"]),
            ("by", record["by"]),
            ("at", record["at"]),
            ("reason", record["reason"][:1000]),
            ("versions", json.dumps(record["versions"])),
        ):
            client.set_model_version_tag(model_name, version_no, f"audit.{n}.{key}", value)


def _recorded(client, experiment_id: str, decision_id: str) -> bool:
    done = client.search_runs(
        [experiment_id], filter_string=f"tags.`{ID_TAG}` = '{decision_id}' and attributes.status = 'FINISHED'"
    )
    return bool(done)


def append(client, model_name: str, record: dict) -> dict:
    """Record one decision ({"id", "action", "by", "at", "reason", "versions", "diff"}) once: version tags + run."""
    import mlflow

    _tag_versions(client, model_name, record)
    experiment_id = store.ensure_experiment(experiment(model_name))
    if not _recorded(client, experiment_id, record["id"]):
        tags = {"audit.action": record["action"], "audit.by": record["by"], "model_name": model_name}
        with mlflow.start_run(
            experiment_id=experiment_id,
            run_name=f"{record['action']}-by-{record['by']}",
            tags={**tags, ID_TAG: record["id"], **runs.owner_tags()},
        ):
            mlflow.log_dict(record, "audit.json")
    return record


def fail_dangling(client, model_name: str) -> list[str]:
    """Mark FAILED the audit runs of `model_name` left RUNNING by processes of this host that are gone."""
    return runs.fail_dangling(client, runs.experiment_ids(client, [experiment(model_name)]))


def history(model_name: str) -> list[dict]:
    """Every recorded decision, oldest first (the FINISHED runs of the audit experiment)."""
    import mlflow

    client = store.client()
    exp = client.get_experiment_by_name(experiment(model_name))
    if exp is None:
        return []
    done = client.search_runs(
        [exp.experiment_id],
        filter_string="attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"],
        max_results=10000,
    )
    return [mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/audit.json") for run in done]

"""Approval-gated promotion: challenger → champion (previous kept), rejection, rollback — every decision audited.

Audit trail, append-only: each decision is (1) a set of `audit.<n>.*` tags on the model versions involved,
never overwritten (n increments), and (2) its own MLflow run in the `<model>-audit` experiment holding
`audit.json`. Nothing is promoted that evaluation did not bless.
"""

from __future__ import annotations

import json
import re

from pipeline.core import clock
from pipeline.core.errors import StageError
from pipeline.registry import store
from pipeline.registry.aliases import ALL as ALIASES, CHALLENGER, CHAMPION, PREVIOUS


def _run_metrics(client, version) -> dict[str, float]:
    run_id = version.run_id or version.tags.get("source_run_id")
    return dict(client.get_run(run_id).data.metrics) if run_id else {}


def _summary(client, version) -> dict:
    metrics = _run_metrics(client, version)
    variant = version.tags.get("model.deploy_variant", "int8")
    per_class = {
        m.split(".")[2]: v for m, v in metrics.items() if m.startswith("eval.per_class.") and m.endswith(".recall")
    }
    return {
        "version": str(version.version),
        "accuracy": metrics.get("eval.accuracy"),
        "size_bytes": metrics.get(f"compress.variants.{variant}.bytes"),
        "latency_ms": metrics.get(f"eval.variants.{variant}.latency_ms_batch1"),
        "per_class_recall": per_class,
        "mcnemar_p_vs_champion": metrics.get("eval.champion.mcnemar.p_value"),
        "data_checksum": version.tags.get("data.manifest_checksum"),
        "git_commit": version.tags.get("git_commit"),
        "blessed": version.tags.get("eval.blessed") == "true",
        "run_id": version.run_id,
    }


def compare(model_name: str) -> dict:
    """Challenger vs champion: metrics, per-class deltas, size, latency, McNemar p, lineage."""
    client = store.client()
    challenger = store.version_by_alias(model_name, CHALLENGER)
    if challenger is None:
        raise StageError(f"{model_name}: no '{CHALLENGER}' version to review; run the training pipeline first.")
    champion = store.version_by_alias(model_name, CHAMPION)
    new = _summary(client, challenger)
    old = _summary(client, champion) if champion else None
    diff = {}
    if old:
        for key in ("accuracy", "size_bytes", "latency_ms"):
            if new[key] is not None and old[key] is not None:
                diff[key] = new[key] - old[key]
        diff["per_class_recall"] = {
            c: round(new["per_class_recall"][c] - old["per_class_recall"].get(c, 0.0), 4)
            for c in new["per_class_recall"]
        }
    return {"model_name": model_name, "challenger": new, "champion": old, "diff": diff}


def comparison_markdown(cmp: dict) -> str:
    """A table for approvers (Prefect artifact / CLI)."""
    new, old = cmp["challenger"], cmp["champion"] or {}

    def fmt(v, pct=False):
        if v is None:
            return "–"
        return f"{v * 100:.2f}%" if pct else (f"{v:,.4g}" if isinstance(v, float) else str(v))

    rows = [
        ("version", new["version"], old.get("version")),
        ("test accuracy", fmt(new["accuracy"], True), fmt(old.get("accuracy"), True)),
        ("model size (bytes)", fmt(new["size_bytes"]), fmt(old.get("size_bytes"))),
        ("batch-1 latency (ms)", fmt(new["latency_ms"]), fmt(old.get("latency_ms"))),
        ("McNemar p vs champion", fmt(new["mcnemar_p_vs_champion"]), ""),
        ("data checksum", (new["data_checksum"] or "")[:12], (old.get("data_checksum") or "")[:12]),
        ("git commit", (new["git_commit"] or "")[:12], (old.get("git_commit") or "")[:12]),
    ]
    lines = [f"## Promotion review: {cmp['model_name']}", "", "| | challenger | champion |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c if c is not None else '–'} |" for a, b, c in rows]
    if cmp["diff"].get("per_class_recall"):
        lines += ["", "| class | recall Δ |", "|---|---|"]
        lines += [f"| {c} | {d:+.4f} |" for c, d in cmp["diff"]["per_class_recall"].items()]
    return "\n".join(lines)


def _require_name(by: str) -> None:
    if not by or not by.strip():
        raise StageError("a decision needs the approver's name (--by NAME); nothing was changed")


def _next_audit_index(version) -> int:
    seen = [int(m.group(1)) for k in version.tags if (m := re.match(r"audit\.(\d+)\.action$", k))]
    return max(seen, default=0) + 1


def _audit(client, model_name: str, action: str, by: str, reason: str, versions: dict, diff: dict | None) -> dict:
    """Append one audit record: tags on each involved version (new index) + an immutable MLflow run."""
    import mlflow

    record = {"action": action, "by": by, "at": clock.utc_iso(), "reason": reason, "versions": versions}
    record["diff"] = diff or {}
    for version_no in {v for v in versions.values() if v is not None}:
        version = client.get_model_version(model_name, version_no)
        n = _next_audit_index(version)
        for key, value in (
            ("action", action),
            ("by", by),
            ("at", record["at"]),
            ("reason", reason[:1000]),
            ("versions", json.dumps(versions)),
        ):
            client.set_model_version_tag(model_name, version_no, f"audit.{n}.{key}", value)
    experiment_id = store.ensure_experiment(f"{model_name}-audit")
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=f"{action}-by-{by}",
        tags={"audit.action": action, "audit.by": by, "model_name": model_name},
    ):
        mlflow.log_dict(record, "audit.json")
    return record


def _pending_challenger(model_name: str, by: str, action: str, reviewed: str | None = None):
    """The `challenger` version a decision is about (after checking the approver's name), or StageError.

    `reviewed`: the version the approver was shown; when `challenger` has moved since (another run finished
    meanwhile), the decision is refused rather than applied to a version nobody reviewed.
    """
    _require_name(by)
    challenger = store.version_by_alias(model_name, CHALLENGER)
    if challenger is None:
        raise StageError(f"{model_name}: no '{CHALLENGER}' to {action}.")
    if reviewed is not None and str(challenger.version) != str(reviewed):
        raise StageError(
            f"{model_name}: '{CHALLENGER}' moved from the reviewed v{reviewed} to v{challenger.version}; "
            f"nothing was changed — review v{challenger.version} (`mlops promote`, or its promotion flow run)."
        )
    return challenger


def approve(model_name: str, by: str, reason: str, reviewed: str | None = None) -> dict:
    """Champion ← challenger (previous ← old champion). Refuses anything evaluation did not bless, and — given the
    `reviewed` version — a challenger that changed since the review.
    """
    challenger = _pending_challenger(model_name, by, "approve", reviewed)
    client = store.client()
    if challenger.tags.get("eval.blessed") != "true":
        raise StageError(f"{model_name} v{challenger.version} was not blessed by evaluation; it cannot be promoted.")
    cmp = compare(model_name)
    champion = store.version_by_alias(model_name, CHAMPION)
    if champion is not None:
        client.set_registered_model_alias(model_name, PREVIOUS, champion.version)
    client.set_registered_model_alias(model_name, CHAMPION, challenger.version)
    client.delete_registered_model_alias(model_name, CHALLENGER)
    client.set_model_version_tag(model_name, challenger.version, "promotion.decision", "approved")
    versions = {"champion": str(challenger.version), "previous": str(champion.version) if champion else None}
    return _audit(client, model_name, "approve", by, reason, versions, cmp["diff"])


def reject(model_name: str, by: str, reason: str, reviewed: str | None = None) -> dict:
    """Tag the challenger as rejected and withdraw its alias; the version stays in the registry."""
    challenger = _pending_challenger(model_name, by, "reject", reviewed)
    client = store.client()
    client.set_model_version_tag(model_name, challenger.version, "promotion.decision", "rejected")
    client.delete_registered_model_alias(model_name, CHALLENGER)
    return _audit(client, model_name, "reject", by, reason, {"challenger": str(challenger.version)}, None)


def rollback(model_name: str, by: str, reason: str) -> dict:
    """Champion ← previous; the rolled-back version becomes `previous` (so a second rollback undoes it)."""
    _require_name(by)
    client = store.client()
    previous = store.version_by_alias(model_name, PREVIOUS)
    champion = store.version_by_alias(model_name, CHAMPION)
    if previous is None or champion is None:
        raise StageError(f"{model_name}: rollback needs both '{CHAMPION}' and '{PREVIOUS}' aliases.")
    client.set_registered_model_alias(model_name, CHAMPION, previous.version)
    client.set_registered_model_alias(model_name, PREVIOUS, champion.version)
    versions = {"champion": str(previous.version), "previous": str(champion.version)}
    return _audit(client, model_name, "rollback", by, reason, versions, None)


def history(model_name: str) -> list[dict]:
    """Every audit record, oldest first, from the audit experiment's runs."""
    import mlflow

    client = store.client()
    exp = client.get_experiment_by_name(f"{model_name}-audit")
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"], max_results=10000)
    return [mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/audit.json") for run in runs]


def aliases(model_name: str) -> dict[str, str | None]:
    """The version each alias names (None when unset)."""
    return {alias: (str(v.version) if (v := store.version_by_alias(model_name, alias)) else None) for alias in ALIASES}

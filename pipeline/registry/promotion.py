"""Approval-gated promotion: challenger → champion (previous kept), rejection, rollback — every decision audited.

Audit trail, append-only (pipeline.registry.audit): each decision is (1) a set of `audit.<n>.*` tags on the model
versions involved, never overwritten (n increments), and (2) its own MLflow run in the `<model>-audit` experiment
holding `audit.json`. Nothing is promoted that evaluation did not bless.

An approval survives a crash at any point: before it moves an alias it writes its intent (PENDING_TAG on the
approved version: decision id, approver, reason, the champion it replaces); a rerun of `approve` finds the intent
and completes exactly that decision — aliases, decision tag, one audit record — then removes the intent.
"""

from __future__ import annotations

import json
import uuid

from pipeline.core import clock
from pipeline.core.errors import StageError
from pipeline.registry import audit, describe, store
from pipeline.registry.aliases import ALL as ALIASES, CHALLENGER, CHAMPION, PREVIOUS

PENDING_TAG = "promotion.pending"


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


def pending_approval(model_name: str):
    """(version, intent) of an approval that was interrupted before it completed, or None."""
    for mv in store.client().search_model_versions(f"name = '{model_name}'"):
        if PENDING_TAG in (mv.tags or {}):
            return mv, json.loads(mv.tags[PENDING_TAG])
    return None


@store.reachable("review of the challenger")
def compare(model_name: str) -> dict:
    """Challenger vs champion: metrics, per-class deltas, size, latency, McNemar p, lineage.

    While an approval is pending (interrupted), it compares that version with the champion it replaces.
    """
    client = store.client()
    pending = pending_approval(model_name)
    if pending is not None:
        challenger, intent = pending
        champion = client.get_model_version(model_name, intent["previous"]) if intent["previous"] else None
    else:
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
        if pct:
            return f"{v * 100:.2f}%"
        if isinstance(v, float):
            return f"{int(v):,}" if v.is_integer() else f"{v:,.4g}"
        return str(v)

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


def _audit(client, model_name: str, action: str, by: str, reason: str, versions: dict, diff: dict | None) -> dict:
    """Append one new decision to the audit trail (pipeline.registry.audit)."""
    record = {"id": uuid.uuid4().hex, "action": action, "by": by, "at": clock.utc_iso(), "reason": reason}
    return audit.append(client, model_name, {**record, "versions": versions, "diff": diff or {}})


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


def _intent(client, model_name: str, by: str, reason: str, reviewed: str | None):
    """The version to approve and the decision's intent: a pending (interrupted) approval, else a new one written
    to the blessed challenger before any alias moves.
    """
    pending = pending_approval(model_name)
    if pending is not None:
        target, intent = pending
        if reviewed is not None and str(target.version) != str(reviewed):
            raise StageError(
                f"{model_name}: an interrupted approval of v{target.version} is pending; nothing was changed — "
                f"rerun the approval of v{target.version} to complete it first."
            )
        return target, intent
    target = _pending_challenger(model_name, by, "approve", reviewed)
    if target.tags.get("eval.blessed") != "true":
        raise StageError(f"{model_name} v{target.version} was not blessed by evaluation; it cannot be promoted.")
    champion = store.version_by_alias(model_name, CHAMPION)
    intent = {
        "id": uuid.uuid4().hex,
        "by": by,
        "reason": reason,
        "at": clock.utc_iso(),
        "previous": str(champion.version) if champion else None,
    }
    client.set_model_version_tag(model_name, target.version, PENDING_TAG, json.dumps(intent))
    return target, intent


def _refuse_while_pending(model_name: str, action: str) -> None:
    """StageError when an interrupted approval is pending: it is completed (approve again) before anything else."""
    pending = pending_approval(model_name)
    if pending is not None:
        raise StageError(
            f"{model_name}: an interrupted approval of v{pending[0].version} is pending; nothing was changed — "
            f"complete it first (`mlops promote --approve`), then {action}."
        )


@store.reachable("approval")
def approve(model_name: str, by: str, reason: str, reviewed: str | None = None) -> dict:
    """Champion ← challenger (previous ← old champion). Refuses anything evaluation did not bless, and — given the
    `reviewed` version — a challenger that changed since the review. Completes an interrupted approval first.
    """
    _require_name(by)
    client = store.client()
    audit.fail_dangling(client, model_name)
    target, intent = _intent(client, model_name, by, reason, reviewed)
    cmp = compare(model_name)
    version, previous = str(target.version), intent["previous"]
    if previous is not None:
        client.set_registered_model_alias(model_name, PREVIOUS, previous)
    client.set_registered_model_alias(model_name, CHAMPION, version)
    challenger = store.version_by_alias(model_name, CHALLENGER)
    if challenger is not None and str(challenger.version) == version:
        client.delete_registered_model_alias(model_name, CHALLENGER)
    client.set_model_version_tag(model_name, version, "promotion.decision", "approved")
    record = {
        "id": intent["id"],
        "action": "approve",
        "by": intent["by"],
        "at": intent["at"],
        "reason": intent["reason"],
        "versions": {"champion": version, "previous": previous},
        "diff": cmp["diff"],
    }
    audit.append(client, model_name, record)
    describe.after_decision(client, model_name, record)
    client.delete_model_version_tag(model_name, version, PENDING_TAG)
    return record


@store.reachable("rejection")
def reject(model_name: str, by: str, reason: str, reviewed: str | None = None) -> dict:
    """Tag the challenger as rejected and withdraw its alias; the version stays in the registry."""
    challenger = _pending_challenger(model_name, by, "reject", reviewed)
    _refuse_while_pending(model_name, "reject")
    client = store.client()
    audit.fail_dangling(client, model_name)
    client.set_model_version_tag(model_name, challenger.version, "promotion.decision", "rejected")
    client.delete_registered_model_alias(model_name, CHALLENGER)
    record = _audit(client, model_name, "reject", by, reason, {"challenger": str(challenger.version)}, None)
    describe.after_decision(client, model_name, record)
    return record


@store.reachable("rollback")
def rollback(model_name: str, by: str, reason: str) -> dict:
    """Champion ← previous; the rolled-back version becomes `previous` (so a second rollback undoes it)."""
    _require_name(by)
    _refuse_while_pending(model_name, "roll back")
    client = store.client()
    audit.fail_dangling(client, model_name)
    previous = store.version_by_alias(model_name, PREVIOUS)
    champion = store.version_by_alias(model_name, CHAMPION)
    if previous is None or champion is None:
        raise StageError(f"{model_name}: rollback needs both '{CHAMPION}' and '{PREVIOUS}' aliases.")
    client.set_registered_model_alias(model_name, CHAMPION, previous.version)
    client.set_registered_model_alias(model_name, PREVIOUS, champion.version)
    versions = {"champion": str(previous.version), "previous": str(champion.version)}
    record = _audit(client, model_name, "rollback", by, reason, versions, None)
    describe.after_decision(client, model_name, record)
    return record


def history(model_name: str) -> list[dict]:
    """Every audit record, oldest first, from the audit experiment's runs."""
    return audit.history(model_name)


def aliases(model_name: str) -> dict[str, str | None]:
    """The version each alias names (None when unset)."""
    return {alias: (str(v.version) if (v := store.version_by_alias(model_name, alias)) else None) for alias in ALIASES}

"""The registry pages tell the story: the Markdown descriptions MLflow shows on a model version's and a model's page.

A version's description states evaluation's blessing decision with the reason for each check, the deploy variant's
accuracy, size and batch-1 latency, the data checksum, the lineage commit (git commit + ref) and — last, so that a
new decision only ever appends a line — its decisions (approve / reject / rollback: when, what, who, why). The
decisions are read back from the version's append-only `audit.<n>.*` tags (pipeline.registry.audit), so rewriting a
description is idempotent and a rerun after a crash never doubles a line. The registered model's description names
the current champion and its latest decision.

The builders (`*_markdown`, `decision_line`, `audit_records`) are pure: data in, Markdown out. The writers
(`describe_version`, `describe_model`, `after_decision`) read and write through the MlflowClient they are given.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from pipeline.registry import store

DECISIONS_HEADING = "### Decisions"
REPORT_PARAM = "paths.evaluation_report"  # the run param naming the evaluation report (logged under reports/)
DEFAULT_REPORT = "reports/evaluation.json"
_AUDIT_TAG = re.compile(r"audit\.(\d+)\.(\w+)$")
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>#|])")


def _plain(text: object) -> str:
    """`text` on one line with Markdown's special characters escaped (reasons are free text typed by people)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def _utc(at: str | None) -> str:
    """'2026-12-01T10:00:00+00:00' → '2026-12-01T10:00:00Z' (unknown times as '?')."""
    return (at or "?").replace("+00:00", "Z")


def audit_records(tags: dict[str, str]) -> list[dict]:
    """The decisions recorded as `audit.<n>.*` version tags, oldest (lowest n) first; `versions` parsed to a dict."""
    by_index: dict[int, dict] = {}
    for key, value in tags.items():
        if m := _AUDIT_TAG.match(key):
            by_index.setdefault(int(m.group(1)), {})[m.group(2)] = value
    records = [by_index[n] for n in sorted(by_index)]
    for record in records:
        try:
            record["versions"] = json.loads(record.get("versions") or "{}")
        except ValueError:
            record["versions"] = {}
    return records


def decision_line(record: dict) -> str:
    """One decision as a Markdown list item: `- 2026-12-01T10:00:00Z approve by alice: reason (champion v2, ...)`."""
    roles = ", ".join(f"{role} v{v}" for role, v in (record.get("versions") or {}).items() if v is not None)
    reason = _plain(record.get("reason") or "no reason given")
    by = _plain(record.get("by") or "?")
    return f"- {_utc(record.get('at'))} {record.get('action', '?')} by {by}: {reason}" + (
        f" ({roles})" if roles else ""
    )


def decisions_markdown(records: list[dict]) -> str:
    """The Decisions section: one line per decision, oldest first (a new decision appends one line)."""
    lines = [decision_line(r) for r in records] or ["_No decision yet._"]
    return "\n".join([DECISIONS_HEADING, "", *lines])


def blessing_markdown(blessed: str | None, reasons: list[dict] | None, failed_checks: str | None) -> str:
    """Evaluation's decision and why: every check with what it saw (`reasons` from the evaluation report), or — when
    the report cannot be read — the failed checks' names from the `eval.failed_checks` tag.
    """
    failed = [r["check"] for r in reasons or [] if not r.get("passed")]
    if reasons is None and failed_checks not in (None, "", "none"):
        failed = str(failed_checks).split(",")
    if blessed == "true":
        head = "**Evaluation: blessed** — every check passed."
    elif blessed == "false":
        head = f"**Evaluation: NOT blessed** — failed: {', '.join(failed) or 'unknown'}."
    else:
        head = "**Evaluation: unknown** — this version has no `eval.blessed` tag."
    if reasons is None:
        return f"{head}\n\n_The evaluation report (each check's detail) is not in the run's artifacts._"
    checks = [
        f"- {'passed' if r.get('passed') else 'FAILED'} {r['check']}: {_plain(r.get('detail', ''))}" for r in reasons
    ]
    return "\n".join([head, "", *checks])


def _number(value: float | None, unit: str, spec: str) -> str:
    return "unknown" if value is None else f"{value:{spec}}{unit}"


def _commit_line(summary: dict, git: dict) -> str:
    """The lineage commit: `git_commit` on `git_ref` once the run is a pushed commit, else the commit it began from."""
    commit = summary.get("git_commit")
    if commit and git.get("dirty") == "false":
        where = f" on `{git.get('ref') or '?'}`" + (f" ({git['remote']})" if git.get("remote") else "")
        return f"- **Lineage commit**: `{commit}`{where}"
    base = git.get("base_commit") or commit or "unknown"
    return f"- **Lineage commit**: not committed yet (`mlops commit-run`); the run started from `{base}`"


def version_markdown(facts: dict) -> str:
    """A version's description, led by the blessing line (what the registry's versions table previews).

    `facts`: model_name, version, summary (promotion._summary's dict), deploy_variant, blessed ('true' / 'false' /
    None), reasons (the report's checks, or None), failed_checks, git (ref, remote, base_commit, dirty) and
    decisions (audit_records). The Decisions section comes last.
    """
    s, variant = facts["summary"], facts["deploy_variant"]
    accuracy = s.get("accuracy")
    metrics = [
        f"- **Accuracy** ({variant}, test split): "
        + ("unknown" if accuracy is None else f"{accuracy:.4f} ({accuracy * 100:.2f}%)"),
        f"- **Size** ({variant}): {_number(s.get('size_bytes'), ' bytes', ',.0f')}",
        f"- **Batch-1 latency** ({variant}): {_number(s.get('latency_ms'), ' ms', '.4g')}",
        f"- **Data checksum**: `{s.get('data_checksum') or 'unknown'}`",
        _commit_line(s, facts["git"]),
    ]
    return "\n".join(
        [
            blessing_markdown(facts["blessed"], facts["reasons"], facts["failed_checks"]),
            "",
            f"### Deploy variant: {variant}",
            "",
            *metrics,
            "",
            decisions_markdown(facts["decisions"]),
        ]
    )


def model_markdown(
    model_name: str, aliases: dict[str, str], champion_decisions: list[dict], latest: dict | None
) -> str:
    """The registered model's description: the champion, its latest decision, the other aliases, the latest decision
    in the registry (`latest`, when given) and where the full audit trail is.
    """
    champion = aliases.get("champion")
    if champion is None:
        lines = ["**No champion yet.**"]
    else:
        on_it = decision_line(champion_decisions[-1]).removeprefix("- ") if champion_decisions else "none recorded"
        page = f"#/models/{model_name}/versions/{champion}"
        lines = [f"**Champion: v{champion}** ([version page]({page}))", "", f"- Its latest decision: {on_it}"]
    others = ", ".join(f"{a} v{v}" for a, v in sorted(aliases.items()) if a != "champion") or "none"
    lines.append(f"- Other aliases: {others}")
    if latest is not None:
        lines.append(f"- Latest decision in this registry: {decision_line(latest).removeprefix('- ')}")
    trail = (
        "Each version's page holds its evaluation, metrics, lineage and decisions; "
        f"every decision is also a run of the `{model_name}-audit` experiment."
    )
    return "\n".join([*lines, "", trail])


def _evaluation_reasons(client, run_id: str | None) -> list[dict] | None:
    """The checks of the evaluation report the register stage logged with run `run_id` (reports/<report name>), or
    None when there is no such artifact. Reads: the run's `paths.evaluation_report` param and that artifact.
    """
    if not run_id:
        return None
    try:
        report_name = Path(client.get_run(run_id).data.params.get(REPORT_PARAM) or DEFAULT_REPORT).name
        with tempfile.TemporaryDirectory(prefix="describe-") as tmp:
            local = client.download_artifacts(run_id, f"reports/{report_name}", tmp)
            report = json.loads(Path(local).read_text())
    except Exception as exc:  # MlflowException / OSError / ValueError: the artifact is missing or not a report
        if store.unreachable(exc) is not None:  # a server that is down says nothing about the artifact
            raise
        return None
    reasons = (report.get("decision") or {}).get("reasons") if isinstance(report, dict) else None
    return reasons if isinstance(reasons, list) else None


def version_facts(client, mv) -> dict:
    """What a version's description states (see version_markdown). Reads: the version's tags, its run's metrics
    (promotion._summary) and params, and the run's evaluation report artifact.
    """
    from pipeline.registry.promotion import _summary

    tags = dict(mv.tags or {})
    summary = _summary(client, mv)
    return {
        "model_name": mv.name,
        "version": str(mv.version),
        "summary": summary,
        "deploy_variant": tags.get("model.deploy_variant", "int8"),
        "blessed": tags.get("eval.blessed"),
        "reasons": _evaluation_reasons(client, mv.run_id or tags.get("source_run_id")),
        "failed_checks": tags.get("eval.failed_checks"),
        "git": {
            "ref": tags.get("git_ref"),
            "remote": tags.get("git_remote"),
            "base_commit": tags.get("git.base_commit"),
            "dirty": tags.get("git_dirty"),
        },
        "decisions": audit_records(tags),
    }


def describe_version(client, model_name: str, version: str | int) -> str:
    """Write version `version`'s description (rebuilt from the registry: idempotent); returns the Markdown.

    Reads: see version_facts. Writes: the model version's description (only when it changed).
    """
    mv = client.get_model_version(model_name, str(version))
    text = version_markdown(version_facts(client, mv))
    if (mv.description or "") != text:
        client.update_model_version(model_name, str(mv.version), description=text)
    return text


def describe_model(client, model_name: str, latest: dict | None = None) -> str:
    """Write the registered model's description: the champion and its latest decision (`latest`: the decision just
    made, if any); returns the Markdown. Reads: the model's aliases and the champion's audit tags. Writes: the
    registered model's description.
    """
    model = client.get_registered_model(model_name)
    aliases = {alias: str(v) for alias, v in (model.aliases or {}).items()}
    champion = aliases.get("champion")
    decisions = audit_records(dict(client.get_model_version(model_name, champion).tags or {})) if champion else []
    text = model_markdown(model_name, aliases, decisions, latest)
    if (model.description or "") != text:
        client.update_registered_model(model_name, description=text)
    return text


def after_decision(client, model_name: str, record: dict) -> None:
    """After an audited decision (pipeline.registry.audit record): redescribe every version it involved (their
    Decisions sections gain its line) and the registered model (champion + latest decision).
    """
    for version in sorted({str(v) for v in (record.get("versions") or {}).values() if v is not None}, key=int):
        describe_version(client, model_name, version)
    describe_model(client, model_name, record)

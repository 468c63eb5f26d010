"""The monitor flow's `monitoring` artifact: the decision and one row per processed batch (pure; no I/O)."""

from __future__ import annotations


def batches_markdown(records: list[dict], decision: str) -> str:
    """The `monitoring` artifact: the decision and one table row per processed batch."""
    lines = [
        "## Monitoring",
        "",
        f"**Decision:** {decision}",
        "",
        "| batch | status | n | accuracy | PSI | drifted | degraded | consecutive bad | signals fired |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        a = r.get("assessment") or {}
        acc = a.get("accuracy")
        lines.append(
            f"| {r['file']} | {r['status']} | {a.get('n', '–')} | "
            f"{'–' if acc is None else f'{acc:.4f}'} | {a.get('psi', float('nan')):.3f} | "
            f"{a.get('drifted', '–')} | {a.get('degraded', '–')} | {r.get('consecutive_bad')} | "
            f"{', '.join(a.get('fired', [])) or '–'} |"
        )
    return "\n".join(lines)

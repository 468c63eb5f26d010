"""Headline figures for the README's results block (serving at 32 clients, the default on the frontier) and the
float32 vs bfloat16 lever's details for RESULTS.md, all from bench/results.json.
"""

from __future__ import annotations

from report_format import minutes, num, table


def headline_rows(results: dict) -> list[list[str]]:
    """Serving at 32 clients and the default's place on the accuracy / wall-time frontier, when measured."""
    rows = []
    if isinstance(s := results.get("serving"), dict) and s.get("target_single_32_clients"):
        one, share = s["target_single_32_clients"], s.get("target_batch32_share_of_raw", {})
        rows.append(
            [
                f"`mlops serve`, 32 clients, single-image {one.get('body', 'JSON')} requests",
                (
                    f"{num(one.get('requests_per_second'), 0)} req/s, p99 {num(one.get('p99_ms'), 1)} ms "
                    f"(target ≥ 2,000 and ≤ 50 ms: {'met' if one.get('met') else 'missed'})"
                ),
            ]
        )
        rows.append(
            [
                f"`mlops serve`, 32-image {share.get('body', 'JSON')} requests",
                (
                    f"{num(share.get('images_per_second'), 0)} images/s = {num(share.get('share'), 3, ('>=', 0.5))} of "
                    f"the raw batch-32 rate (target ≥ 0.5: {'met' if share.get('met') else 'missed'})"
                ),
            ]
        )
    f = results.get("frontier")
    if isinstance(f, dict) and isinstance(default := f.get("default"), dict):
        rows.append(
            [
                "default on the accuracy / wall-time frontier",
                (
                    f"{'yes' if default.get('on_frontier') else 'no'}: test accuracy "
                    f"{num(default.get('test_accuracy'), 4)} (Keras) after "
                    f"{minutes(default.get('wall_seconds'))} of training"
                ),
            ]
        )
    return rows


def precision_details(p: dict | None) -> list[str]:
    """bench/precision.py: training step seconds under float32 and mixed_bfloat16, every run, min and median."""
    if not isinstance(p, dict) or not p.get("models"):
        return []
    flags = ", ".join(p.get("cpu_bf16_flags") or []) or "none reported"
    out = ["", "### float32 vs mixed_bfloat16 on the CPU", "", f"`{p.get('command')}`; {p.get('measured', '')}.", ""]
    out += [f"CPU bfloat16 flags: {flags}.", ""]
    cells = []
    for model, m in p["models"].items():
        for policy in ("float32", "mixed_bfloat16"):
            side = m.get(policy, {})
            runs = ", ".join(num(v, 4) for v in side.get("runs", []))
            cells.append([model, policy, runs, num(side.get("min"), 4), num(side.get("median"), 4)])
        cells.append(
            [model, "float32 ÷ bfloat16 median", "", "", num(m.get("float32_over_bfloat16_median_step_time"), 3)]
        )
    return out + table(["model", "policy", "step seconds, every run", "min", "median"], cells)

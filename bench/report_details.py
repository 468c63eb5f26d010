"""The detail sections of bench/RESULTS.md (every run of each comparison, the default run, serving levels, the
frontier) and the README's results table, from results.json only.
"""

from __future__ import annotations

from report_format import dig, met, minutes, num, passes, table, target
from report_headline import headline_rows

SIZE_TARGETS = {"int8": 3.9, "fp16": 1.95}  # fp32 ÷ variant size (issue 12)
RUN_KEYS = {
    "training": ("images_per_second", "fit_seconds", "val_accuracy"),
    "orchestration": ("seconds", "train_fit_s", "mlflow_logging_s"),
}


def runs_table(section: dict, name: str) -> list[str]:
    """Every measured run of an A/B comparison, in the order they ran."""
    keys = RUN_KEYS[name]
    lines = table(
        ["run", "side", *keys], ([r.get("round"), r["side"], *(r.get(k) for k in keys)] for r in section["runs"])
    )
    if noop := section.get("noop_runs"):
        lines += ["", *table(["run", "side", "seconds"], ([r.get("round"), r["side"], r["seconds"]] for r in noop))]
    return lines


def comparison_details(results: dict) -> list[str]:
    """Training and orchestration: the workload and every run (new schema only)."""
    out = []
    titles = {
        "training": "Train stage vs bare Keras",
        "orchestration": "Training flow vs `dvc repro` + `mlops commit-run`",
    }
    for name, title in titles.items():
        section = results.get(name) or {}
        if "runs" not in section:
            continue
        workload = ", ".join(f"{k} {v}" for k, v in section.get("workload", {}).items() if k != "params")
        ratio = next(v["ratio"] for v in section.values() if isinstance(v, dict) and "ratio" in v)
        out += [
            "",
            f"### {title}",
            "",
            f"{section['method']}; {workload}. Ratio: {ratio}.",
            "",
            *runs_table(section, name),
        ]
    return out


def default_run_details(d: dict | None) -> list[str]:
    """The default run: training, and every .tflite variant's accuracy, size, ratio and latency."""
    if not d:
        return ["", "### Default run", "", "Not collected yet: `make run`, then `python bench/default_run.py`."]
    t, v = d["training"], d["variants"]
    head = (
        f"{t['model']}, {t['epochs']} epochs on {t['train_samples']:,} images, {t['backend']} on the {t['device']} "
        f"({t['precision']}); training {minutes(t['fit_seconds'])} ({num(t['images_per_second'], 0)} images/s), "
        f"val accuracy {num(t['val_accuracy'], 4)}; Keras test accuracy {num(d['keras_test_accuracy'], 4)} "
        f"(pruned {num(d.get('keras_pruned_test_accuracy'), 4)}); `make run` {make_run_text(d)}."
    )
    rows = (
        [
            k,
            num(x["test_accuracy"], 4),
            f"{x['bytes']:,}",
            num(x["size_ratio_vs_fp32"], 3, (">=", SIZE_TARGETS[k]) if k in SIZE_TARGETS else None),
            num(x["latency_ms_batch1"], 3),
        ]
        for k, x in v.items()
    )
    return [
        "",
        "### Default run",
        "",
        head,
        "",
        *table(["variant", "test accuracy", "bytes", "fp32 ÷ size", "batch-1 ms"], rows),
    ]


def make_run_text(d: dict) -> str:
    """`make run`'s wall time, or why it was not measured."""
    clock = d.get("make_run", {})
    if not clock.get("measured"):
        return "wall time not measured (" + str(clock.get("why", "no record")) + ")"
    repro = clock.get("dvc_repro_seconds")
    return f"{minutes(clock['seconds'])}" + (f" (`dvc repro` {minutes(repro)})" if repro is not None else "")


def levels(s: dict) -> list[str]:
    """Serving load levels, one table per (request body kind, images per request)."""
    out = []
    default_body = s.get("body", "JSON")
    groups = dict.fromkeys(
        (lv.get("body", default_body), lv.get("images_per_request", 1)) for lv in s.get("levels", [])
    )
    for body, n in groups:
        rows = [
            lv for lv in s["levels"] if (lv.get("body", default_body), lv.get("images_per_request", 1)) == (body, n)
        ]
        cells = (
            [
                lv.get("clients"),
                num(lv.get("requests_per_second"), 1),
                num(lv.get("images_per_second"), 1),
                num(lv.get("p50_ms"), 1),
                num(lv.get("p99_ms"), 1),
                lv.get("ok"),
                lv.get("errors"),
            ]
            for lv in rows
        )
        out += ["", f"{n} image(s) per {body} request:", ""]
        out += table(["clients", "req/s", "images/s", "p50 ms", "p99 ms", "ok", "errors"], cells)
    return out


def _single_target(one: dict) -> str:
    """Target (a) per body kind, and the body the verdict uses."""
    by_body = one.get("by_body") or {}
    each = "; ".join(
        f"{body} {num(t.get('requests_per_second'), 1)} req/s, p99 {num(t.get('p99_ms'), 1)} ms ({met(t.get('met'))})"
        for body, t in by_body.items()
    )
    verdict = f"{met(one.get('met'))}" + (f" (judged on {one['body']})" if one.get("body") else "")
    return verdict + (f" — {each}" if each else "")


def serving_block(s: dict, title: str) -> list[str]:
    """One serving measurement: raw interpreter rates, both targets, the levels."""
    raw = s.get("raw_interpreter_images_per_second", {})
    one, share = s.get("target_single_32_clients", {}), s.get("target_batch32_share_of_raw", {})
    server = s.get("server")
    lines = [
        "",
        f"#### {title}",
        "",
        f"Variant {s.get('variant')}"
        + (f", alias {s['alias']}" if s.get("alias") else "")
        + (", server " + ", ".join(f"{k} {v}" for k, v in server.items()) if isinstance(server, dict) else "")
        + "; raw interpreter images/s: "
        + ", ".join(f"{k} {num(x, 1)}" for k, x in raw.items())
        + ".",
        "",
        f"- 32 clients, single-image requests ≥ 2,000 req/s with p99 ≤ 50 ms: {_single_target(one)}.",
        f"- 32-image {share.get('body', 'JSON')} requests ≥ 0.5 of the raw batch-32 rate "
        f"({num(share.get('share'), 3, ('>=', 0.5))}): {met(share.get('met'))}"
        + (f"; JSON bodies {num(share['json_share'], 3)}" if share.get("json_share") is not None else "")
        + ".",
    ]
    return lines + levels(s)


def serving_details(s: dict | None) -> list[str]:
    """The serving section and, when present, its 'before' measurement."""
    if not s:
        return []
    out = ["", "### Serving", "", f"`{s.get('command', 'bench/serving.py')}`"]
    out += serving_block(s, "now")
    if isinstance(before := s.get("before"), dict):
        out += serving_block(before, "before")
    return out


def _frontier_row(p: dict) -> list[object]:
    wall = p.get("wall_seconds")
    on = p.get("on_frontier")
    return [
        p.get("label", ""),
        p.get("model", ""),
        num(p.get("budget_minutes"), 1) if p.get("budget_minutes") is not None else "– (params.yaml epochs)",
        p.get("epochs", "–"),
        num(wall / 60 if wall is not None else None, 1),
        num(p.get("test_accuracy"), 4),
        num(p.get("test_accuracy_flip_tta"), 4),
        "–" if on is None else ("yes" if on else "no"),
    ]


def frontier_details(f: object) -> list[str]:
    """The accuracy / wall-time frontier (bench/frontier.py): every point, the default config among them."""
    if not f:
        return []
    points = [p for p in (f if isinstance(f, list) else dig(f, "points", default=[])) if isinstance(p, dict)]
    default = dig(f, "default") if isinstance(f, dict) else None
    if isinstance(default, dict) and default not in points:
        points.append({**default, "label": f"default ({default.get('label', '')})"})
    out = ["", "### Accuracy / wall-time frontier", ""]
    if isinstance(f, dict) and f.get("command"):
        out += [f"`{f['command']}`; test accuracy vs the train stage's wall time.", ""]
    if isinstance(f, dict) and f.get("measured_at"):
        out += [
            f"All points come from one run (finished {f['measured_at']}, {f.get('cpus', '?')} CPU cores"
            + (f", {f['cpu_model']}" if f.get("cpu_model") else "")
            + "): compare them with each other. Wall times in other sections may come from another run or machine.",
            "",
        ]
    out += table(
        ["config", "model", "budget min", "epochs", "wall min", "test accuracy", "with flip TTA", "on frontier"],
        map(_frontier_row, points),
    )
    if isinstance(default, dict):
        on = default.get("on_frontier")
        out += ["", f"The default config is on the frontier: {'–' if on is None else ('yes' if on else 'no')}."]
    return [*out, "", "![frontier](frontier.png)"]


def readme_block(results: dict) -> list[str]:
    """The README's results table: the default run's figures (or that it was not collected yet)."""
    d = results.get("default_run")
    if not d:
        return [
            "The default run's figures have not been collected yet: after `make run`, `make bench` (or",
            "`python bench/default_run.py && python bench/report.py`) writes them here.",
            *compression_fallback(results.get("compression")),
        ]
    t, v, dv = d["training"], d["variants"], d["deploy_variant"]
    int8 = v["int8"]["size_ratio_vs_fp32"]
    acc = ", ".join(f"{k} {num(x['test_accuracy'], 4)}" for k, x in v.items() if k != dv)
    rows = [
        ["`make run` wall time", make_run_text(d)],
        [
            f"{dv} `.tflite` test accuracy ({d.get('test_samples', 0):,} test images)",
            f"**{num(v[dv]['test_accuracy'], 4)}** ({acc}; Keras before pruning {num(d['keras_test_accuracy'], 4)})",
        ],
        ["int8 − fp32 `.tflite` accuracy", f"{num(v['int8']['accuracy_delta_points_vs_fp32'], 2, sign=True)} points"],
        [
            "size fp32 / fp16 / dynamic / int8 `.tflite`",
            " / ".join(f"{x['bytes']:,}" for x in v.values())
            + f" B; fp32 ÷ int8 = {num(int8, 3, ('>=', 3.9))} (target {target('>=', 3.9)}: "
            + ("met" if passes(int8, ">=", 3.9) else "missed")
            + ")",
        ],
        ["batch-1 latency " + " / ".join(v), " / ".join(num(x["latency_ms_batch1"], 3) for x in v.values()) + " ms"],
        [
            "training",
            (
                f"{t['model']}, {t['epochs']} epochs, {t['backend']} on the {t['device']}: "
                f"{minutes(t['fit_seconds'])}, {num(t['images_per_second'], 0)} images/s, "
                f"val accuracy {num(t['val_accuracy'], 4)}"
            ),
        ],
    ]
    rows += headline_rows(results)
    cpus = t.get("cpus", d.get("cpus"))
    when = f"evaluated {d.get('evaluated_at', d.get('measured_at'))}, trained on {cpus} CPU cores"
    return [f"Default params, {when} (`bench/default_run.py`):", "", *table(["figure", "value"], rows)]


def compression_fallback(c: dict | None) -> list[str]:
    """Until the default run is collected: the variants bench/compression.py measured on a default workspace."""
    if not c:
        return []
    v, ratio = c["variants"], c["size_ratio_vs_fp32"]["int8"]
    rows = [
        [k, num(x["accuracy"], 4), f"{x['bytes']:,}" if "bytes" in x else "–", num(x["latency_ms_batch1"], 3)]
        for k, x in v.items()
    ]
    verdict = "met" if passes(ratio, ">=", 3.9) else "missed"
    return [
        "",
        (
            f"Meanwhile, `bench/compression.py` on a default-params workspace, measured {c.get('measured_at')} on "
            f"{c.get('cpus')} CPU cores (test split; fp32 ÷ int8 size = {num(ratio, 3, ('>=', 3.9))}, target "
            f"{target('>=', 3.9)}: {verdict}):"
        ),
        "",
        *table(["variant", "test accuracy", "bytes", "batch-1 ms"], rows),
    ]

"""The summary table of bench/RESULTS.md: one (figure, value, target, met) row per figure, from results.json only.

Every section is read defensively: a section in the old schema (one run per side, or a different data path) is
shown as measured, labelled "old method, not yet re-measured", and its target is not judged.
"""

from __future__ import annotations

from report_format import OLD, dig, met, num, passes, target

Row = tuple[str, str, str, str]


def _row(figure: str, value: str, goal: str = "", ok: bool | str | None = None) -> Row:
    return (figure, value, goal, met(ok))


def _ratio_row(figure: str, cmp: dict, unit: str, op: str, limit: float, subject: str, baseline: str) -> Row:
    """A like-for-like comparison: ratio of medians vs its target, then both medians and mins."""
    ratio = cmp["ratio_of_medians"]
    s, b = cmp[subject], cmp[baseline]
    value = (
        f"{num(ratio, 3, (op, limit))} (medians {num(s['median'], 1)} vs {num(b['median'], 1)} {unit}; "
        f"mins {num(s['min'], 1)} vs {num(b['min'], 1)}; n = {s['n']} + {b['n']})"
    )
    return _row(figure, value, target(op, limit), passes(ratio, op, limit))


def training(t: dict) -> list[Row]:
    """Train stage vs bare Keras (new: alternating fresh processes; old: one run each)."""
    if "runs" in t:
        return [
            _ratio_row(
                f"train stage ÷ bare Keras, images/s ({t['workload']['model']}, same recipe)",
                t["images_per_second"],
                "images/s",
                ">=",
                0.95,
                "stage",
                "bare",
            )
        ]
    rows = []
    if "stage_over_bare_throughput" in t:
        rows.append(
            _row(
                "train stage ÷ bare Keras images/s (old method, not yet re-measured: different optimizer, loss and "
                "validation batch, one run each)",
                f"{num(t['stage_over_bare_throughput'], 3)}",
                target(">=", 0.95),
                OLD,
            )
        )
    if curves := t.get("accuracy_at_budget"):
        text = "; ".join(
            f"{m}: " + ", ".join(f"{num(p['seconds'] / 60, 1)} min→{num(p['val_accuracy'], 4)}" for p in pts)
            for m, pts in curves.items()
        )
        rows.append(_row("accuracy at budget (old method; replaced by the frontier section)", text, "", OLD))
    return rows


def orchestration(o: dict) -> list[Row]:
    """Flow vs bare run, fixed cost, no-op repro, MLflow logging on the benchmark workload."""
    if "runs" not in o:
        label = "(old method, not yet re-measured: one run each)"
        return [
            _row(f"training flow ÷ bare `dvc repro` {label}", num(o.get("flow_over_bare_ratio"), 3), "≤ 1.1", OLD),
            _row(f"flow fixed overhead {label}", f"{num(o.get('flow_fixed_overhead_s'), 1)} s", "≤ 10 s", OLD),
            _row(f"no-op ÷ full `dvc repro` {label}", num(o.get("noop_over_full_ratio"), 4), "≤ 0.05", OLD),
            _row(
                f"MLflow logging ÷ training, benchmark workload {label}",
                num(o.get("mlflow_logging_over_training_ratio"), 4),
                "≤ 0.01",
                OLD,
            ),
        ]
    noop = o["noop"]["noop_dvc_repro"]["median"]
    fixed = o["flow_fixed_overhead_s"]
    ratio = o["noop_over_full_repro"]
    return [
        _ratio_row(
            "training flow ÷ (`dvc repro` + `mlops commit-run`)", o["flow_vs_bare"], "s", "<=", 1.10, "flow", "bare"
        ),
        _row(
            "flow fixed overhead (median no-op flow − median no-op `dvc repro`)",
            f"{num(fixed, 2, ('<=', 10))} s",
            target("<=", 10, "s"),
            passes(fixed, "<=", 10),
        ),
        _row(
            "no-op ÷ full `dvc repro` (medians)",
            f"{num(ratio, 4, ('<=', 0.05))} (no-op {num(noop, 2, ('<=', 2))} s)",
            "≤ 0.05 and no-op ≤ 2 s",
            ratio <= 0.05 and noop <= 2,
        ),
        _row(
            "MLflow logging ÷ training, benchmark workload (median; judged on the default run)",
            num(o.get("mlflow_logging_over_training_median"), 4),
            "",
            None,
        ),
    ]


def default_run(d: dict) -> list[Row]:
    """The default run's compression and logging targets."""
    v = d["variants"]
    rows = []
    for variant, limit in (("int8", 3.9), ("fp16", 1.95)):
        ratio = v[variant]["size_ratio_vs_fp32"]
        rows.append(
            _row(
                f"default run: fp32 ÷ {variant} `.tflite` size",
                f"{num(ratio, 2, ('>=', limit))} ({v['fp32']['bytes']:,} / {v[variant]['bytes']:,} B)",
                target(">=", limit),
                passes(ratio, ">=", limit),
            )
        )
    delta = v["int8"]["accuracy_delta_points_vs_fp32"]
    rows.append(
        _row(
            "default run: int8 − fp32 `.tflite` test accuracy (points)",
            num(delta, 2, (">=", -0.5), sign=True),
            target(">=", -0.5),
            passes(delta, ">=", -0.5),
        )
    )
    if (log := d.get("mlflow_logging_over_training")) is not None:
        fit = d["training"]["fit_seconds"]
        rows.append(
            _row(
                "default run: MLflow logging ÷ training time",
                f"{num(log, 4, ('<=', 0.01))} ({num(d['mlflow_logging_s'], 2)} s / {num(fit, 0)} s)",
                target("<=", 0.01),
                passes(log, "<=", 0.01),
            )
        )
    return rows


def compression(c: dict) -> list[Row]:
    """Size, accuracy and latency of each variant, measured by bench/compression.py on a workspace."""
    s, d, v = c["size_ratio_vs_fp32"], c["accuracy_delta_points_vs_fp32_tflite"], c["variants"]
    size_ok = s["int8"] >= 3.9 and s["fp16"] >= 1.95
    lat_k, lat_f = c["latency_keras_over_int8"], c["latency_fp32_tflite_over_int8"]
    speeds = " / ".join(
        num(v[k]["images_per_second_batch256"], 0) for k in ("keras_fp32", "fp32", "fp16", "dynamic", "int8")
    )
    return [
        _row(
            "size ratio fp32 ÷ fp16 / dynamic / int8",
            f"{num(s['fp16'], 2, ('>=', 1.95))} / {num(s['dynamic'], 2)} / {num(s['int8'], 2, ('>=', 3.9))}",
            "int8 ≥ 3.9, fp16 ≥ 1.95",
            size_ok,
        ),
        _row(
            "accuracy Δ vs fp32 (points) fp16 / dynamic / int8",
            " / ".join(
                num(d[k], 2, (">=", -0.5) if k == "int8" else None, sign=True) for k in ("fp16", "dynamic", "int8")
            ),
            "int8 ≥ −0.5",
            d["int8"] >= -0.5,
        ),
        _row("batch-1 latency Keras fp32 ÷ int8 .tflite", num(lat_k, 1, (">=", 3)), "≥ 3", lat_k >= 3),
        _row("batch-1 latency fp32 .tflite ÷ int8 .tflite", num(lat_f, 2, (">=", 1.5)), "≥ 1.5", lat_f >= 1.5),
        _row("batch-256 images/s Keras / fp32 / fp16 / dynamic / int8", speeds, "reported", None),
    ]


def scaling(s: dict) -> list[Row]:
    """Growth of ingest / validate / one epoch with the data, and the train stage's peak memory."""
    rows = [
        _row(
            "slope s per 1,000 images: ingest / validate / 1 train epoch",
            " / ".join(num(x, 3) for x in s["slope_s_per_1000_images"].values()),
            "linear growth",
            None,
        )
    ]
    for r in s["rows"]:
        cells = (
            f"{num(r[k]['seconds'], 1)} s, {num(r[k]['peak_rss_mb'], 0)} MB"
            for k in ("ingest", "validate", "train_1_epoch")
        )
        rows.append(
            _row(
                f"{num(r['fraction'] * 100, 0)} % ({r['images']:,} images): ingest / validate / epoch",
                " / ".join(cells),
            )
        )
    f = s["image_folder_ingest"]
    rows.append(
        _row(
            f"image-folder ingest, {f['files']:,} PNG files", f"{num(f['seconds'], 1)} s, {num(f['peak_rss_mb'], 0)} MB"
        )
    )
    rss = s["train_peak_rss_mb_full"]
    rows.append(_row("train stage peak RSS (full data)", f"{num(rss, 0, ('<=', 2560))} MB", "≤ 2,560 MB", rss <= 2560))
    return rows


def input_pipeline(i: dict) -> list[Row]:
    """Data path ÷ model images/s (new: the in-memory array path; old: the PyDataset path)."""
    rates = f"{num(i['data_path_images_per_second'], 0)} vs {num(i['model_images_per_second'], 0)} images/s"
    value = f"{num(i['headroom'], 1, ('>=', 2))} ({rates})"
    if "data_path" not in i:
        label = (
            "input pipeline headroom (old method, not yet re-measured: the PyDataset path default training no "
            "longer uses)"
        )
        return [_row(label, value, "≥ 2", OLD)]
    first = i.get("headroom_first_epoch_with_conversion")
    value += f"; first epoch incl. the float32 conversion {num(first, 1, ('>=', 2))}"
    return [_row("input pipeline headroom: in-memory array path ÷ model steps", value, "≥ 2", i["headroom"] >= 2)]


def run_overhead(r: dict) -> list[Row]:
    """Clone + pull + commit/push share of a clone-based run, and that run vs a standing workspace."""
    n = len(r.get("trials", []))
    return [
        _row(
            f"run-as-commit overhead ÷ run wall time (median, min; n = {n})",
            f"{num(r['overhead_ratio_median'], 3)}, {num(r['overhead_ratio_min'], 3)}",
            "reported",
        ),
        _row(
            f"clone-based run ÷ same retrain in a standing workspace (median, min; n = {n})",
            f"{num(r['clone_run_vs_workspace_median'], 3)}, {num(r['clone_run_vs_workspace_min'], 3)}",
            "reported",
        ),
    ]


def serving(s: dict) -> list[Row]:
    """The two serving targets of issue 12."""
    one, share = s.get("target_single_32_clients", {}), s.get("target_batch32_share_of_raw", {})
    return [
        _row(
            f"serving, 32 clients, single-image {one.get('body', 'JSON')} requests: req/s, p99",
            f"{num(one.get('requests_per_second'), 0)} req/s, p99 {num(one.get('p99_ms'), 1)} ms",
            "≥ 2,000 req/s and p99 ≤ 50 ms",
            one.get("met"),
        ),
        _row(
            f"serving, 32-image {share.get('body', 'JSON')} requests ÷ raw interpreter batch-32 images/s",
            num(share.get("share"), 3, (">=", 0.5)),
            "≥ 0.5",
            share.get("met"),
        ),
    ]


def gpu_check(g: dict | None) -> list[Row]:
    """The GPU check's median speed-up, or that it was not run."""
    if not g:
        return [
            _row(
                "GPU check (`bench/gpu_check.sh`)", "not run: no GPU machine was lent to the session that measured this"
            )
        ]
    gpu, cpu = g.get("gpu", {}), g.get("cpu", {})
    value = (
        f"{num(g.get('speedup_median_images_per_second'), 2)}× median images/s "
        f"({num(dig(gpu, 'images_per_second_median'), 0)} on {gpu.get('device_name')} {gpu.get('backend')} "
        f"{gpu.get('precision')} vs {num(dig(cpu, 'images_per_second_median'), 0)} on the CPU; n = {g.get('runs')})"
    )
    return [_row("GPU check: train stage GPU ÷ CPU", value, "reported")]


def frontier(f: dict) -> list[Row]:
    """Whether the default config is on the accuracy / wall-time frontier (details: its own section)."""
    on = f.get("default_on_frontier") if isinstance(f, dict) else None
    value = "n/a" if on is None else ("yes" if on else "no")
    return [_row("default config on the accuracy / wall-time frontier (bench/frontier.py)", value, "reported")]


SECTIONS = {
    "training": training,
    "orchestration": orchestration,
    "default_run": default_run,
    "compression": compression,
    "scaling": scaling,
    "input_pipeline": input_pipeline,
    "run_overhead": run_overhead,
    "serving": serving,
    "frontier": frontier,
}


def rows(results: dict) -> list[Row]:
    """Every summary row, section by section (sections that are absent are skipped)."""
    out: list[Row] = []
    for name, render in SECTIONS.items():
        if section := results.get(name):
            out += render(section)
    return out + gpu_check(results.get("gpu_check"))

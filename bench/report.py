"""Render bench/results.json as the markdown table in bench/RESULTS.md (linked from the README)."""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def rows(r: dict) -> list[tuple[str, str, str, str]]:
    out = []

    def add(figure, value, target, ok):
        out.append((figure, value, target, "yes" if ok else ("**no**" if ok is False else "–")))

    if t := r.get("training"):
        add(
            "train stage ÷ bare Keras images/s (seed CNN)",
            f"{t['stage_over_bare_throughput']:.3f} "
            f"({t['stage_images_per_second']:.0f} vs {t['bare_keras_images_per_second']:.0f})",
            "≥ 0.95",
            t["stage_over_bare_throughput"] >= 0.95,
        )
        curve = "; ".join(
            f"{m}: " + ", ".join(f"{p['seconds'] / 60:.1f} min→{p['val_accuracy']:.4f}" for p in pts)
            for m, pts in t["accuracy_at_budget"].items()
        )
        add(
            "accuracy at budget (val; schedule sized to budget)",
            curve,
            "fast_net > seed_cnn at every budget ≥ 2 min",
            t["fast_beats_seed_at_every_budget_ge_120s"],
        )
    if o := r.get("orchestration"):
        add(
            "training flow ÷ bare `dvc repro`",
            f"{o['flow_over_bare_ratio']:.3f} ({o['training_flow_s']:.0f} s vs {o['bare_dvc_repro_s']:.0f} s)",
            "≤ 1.10",
            o["flow_over_bare_ratio"] <= 1.10,
        )
        add(
            "flow fixed overhead (flow on an up-to-date workspace − no-op `dvc repro`)",
            f"{o['flow_fixed_overhead_s']:.1f} s",
            "≤ 10 s",
            o["flow_fixed_overhead_s"] <= 10,
        )
        add(
            "no-op ÷ full `dvc repro`",
            f"{o['noop_over_full_ratio']:.4f} ({o['noop_repro_s']:.2f} s)",
            "≤ 0.05 and ≤ 2 s",
            o["noop_over_full_ratio"] <= 0.05 and o["noop_repro_s"] <= 2,
        )
        add(
            "MLflow logging ÷ training time",
            f"{o['mlflow_logging_over_training_ratio']:.4f} ({o['mlflow_logging_s']} s / {o['train_fit_s']:.0f} s)",
            "≤ 0.01",
            o["mlflow_logging_over_training_ratio"] <= 0.01,
        )
    if c := r.get("compression"):
        s, d = c["size_ratio_vs_fp32"], c["accuracy_delta_points_vs_fp32_tflite"]
        add(
            "size ratio fp32 ÷ fp16 / dynamic / int8",
            f"{s['fp16']:.2f} / {s['dynamic']:.2f} / {s['int8']:.2f}",
            "int8 ≥ 3.9, fp16 ≥ 1.95",
            s["int8"] >= 3.9 and s["fp16"] >= 1.95,
        )
        add(
            "accuracy Δ vs fp32 (points) fp16 / dynamic / int8",
            f"{d['fp16']:+.2f} / {d['dynamic']:+.2f} / {d['int8']:+.2f}",
            "int8 ≥ −0.5",
            d["int8"] >= -0.5,
        )
        add(
            "batch-1 latency Keras fp32 ÷ int8 .tflite",
            f"{c['latency_keras_over_int8']:.1f}",
            "≥ 3",
            c["latency_keras_over_int8"] >= 3,
        )
        add(
            "batch-1 latency fp32 .tflite ÷ int8 .tflite",
            f"{c['latency_fp32_tflite_over_int8']:.2f}",
            "≥ 1.5",
            c["latency_fp32_tflite_over_int8"] >= 1.5,
        )
        v = c["variants"]
        add(
            "batch-256 images/s Keras / fp32 / fp16 / dynamic / int8",
            " / ".join(
                f"{v[k]['images_per_second_batch256']:.0f}" for k in ("keras_fp32", "fp32", "fp16", "dynamic", "int8")
            ),
            "reported",
            None,
        )
    if s := r.get("scaling"):
        add(
            "slope s per 1,000 images: ingest / validate / 1 train epoch",
            " / ".join(f"{v:.3f}" for v in s["slope_s_per_1000_images"].values()),
            "linear growth",
            None,
        )
        for row in s["rows"]:
            add(
                f"{int(row['fraction'] * 100)} % ({row['images']:,} images): ingest / validate / epoch",
                " / ".join(
                    f"{row[k]['seconds']:.1f} s, {row[k]['peak_rss_mb']:.0f} MB"
                    for k in ("ingest", "validate", "train_1_epoch")
                ),
                "",
                None,
            )
        f = s["image_folder_ingest"]
        add(
            f"image-folder ingest, {f['files']:,} PNG files",
            f"{f['seconds']:.1f} s, {f['peak_rss_mb']:.0f} MB",
            "",
            None,
        )
        add(
            "train stage peak RSS (full data)",
            f"{s['train_peak_rss_mb_full']:.0f} MB",
            "≤ 2,560 MB",
            s["train_peak_rss_mb_full"] <= 2560,
        )
    if i := r.get("input_pipeline"):
        add(
            "input pipeline headroom (data ÷ model images/s)",
            f"{i['headroom']:.1f} ({i['data_path_images_per_second']:.0f} vs {i['model_images_per_second']:.0f})",
            "≥ 2",
            i["headroom"] >= 2,
        )
    if g := r.get("gpu_check"):
        add("GPU check (JAX, mixed precision)", json.dumps(g), "", None)
    else:
        add(
            "GPU check (`bench/gpu_check.sh`)",
            "not run: no GPU machine was lent to the session that measured this",
            "",
            None,
        )
    return out


def main() -> None:
    results = json.loads((HERE / "results.json").read_text())
    lines = [
        "# Benchmark results",
        "",
        (
            "Each figure is a ratio against a baseline measured in the same run, on the "
            "same machine (2 CPU cores). Regenerate with `make bench`."
        ),
        "",
        "| figure | value | target | met |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows(results)]
    lines += [
        "",
        "## Missed targets: why, and what it would take",
        "",
        (
            "- **fast_net vs seed_cnn at short budgets.** With this pipeline's recipe (AdamW, warmup + cosine) the "
            "seed CNN is strong on 2 CPU cores: 92.3 % in 2.5 min. The augmented residual net overtakes it only from "
            "about 7 min (14 epochs: 93.3 %, the default run). Closing the gap at 2–5 min needs a narrower fast net "
            "(width 16 trains ~2.5× faster), augmentation only in later epochs, or an accelerator."
        ),
        (
            "- **MLflow logging ÷ training.** Logging costs about 3.6–4 s per run regardless of its length (Keras "
            "model save, pyfunc environment, zipped data docs). On the default 9.6-min training that is 4.1 s / 561 s"
            " = 0.73 % (target met); the 3-min benchmark workload gives 3.2 %."
        ),
        (
            "- **int8 size ratio 3.896 vs 3.9.** A fixed ~8 KB of flatbuffer overhead (tensor names, quantisation "
            "parameters, int32 biases) on a 300k-parameter model. Per-tensor int8 (the default) removed 12 KB of "
            "per-channel parameters; a model of ≥ 1M parameters, or stripping tensor names, would pass."
        ),
        (
            "- **Validate slope ≈ 0.** Validation time is dominated by its fixed cost (importing Great Expectations, "
            "≈ 3.5 s) at these sizes; ingest and training grow linearly."
        ),
    ]
    if (HERE / "accuracy_vs_time.png").is_file():
        lines += ["", "![accuracy vs wall time](accuracy_vs_time.png)"]
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

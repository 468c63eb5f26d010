"""bench/report.py: the committed RESULTS.md and README results table are what results.json gives, and the report
never rounds a missed target into a pass. Standard library only (no TensorFlow, MLflow or Prefect imports)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
_spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
assert _spec and _spec.loader
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)

from report_format import num  # noqa: E402  (bench/ is on sys.path from here on)


def test_committed_results_md_and_readme_match_results_json(capsys):
    wanted = report.expected()
    status = report.check(wanted)
    assert status == 0, "run `python bench/report.py` and commit:\n" + capsys.readouterr().out[-4000:]


def _variants(int8_bytes: int) -> dict:
    sizes = {"fp32": 1_194_912, "fp16": 604_024, "dynamic": 312_048, "int8": int8_bytes}
    return {
        k: {
            "test_accuracy": 0.9264,
            "accuracy_delta_points_vs_fp32": 0.0,
            "bytes": b,
            "size_ratio_vs_fp32": sizes["fp32"] / b,
            "latency_ms_batch1": 0.1,
        }
        for k, b in sizes.items()
    }


def _synthetic(int8_bytes: int = 306_664) -> dict:
    run = {"images_per_second": 100.0, "fit_seconds": 10.0, "val_accuracy": 0.9}
    runs = [{"side": s, "round": i, **run} for i in range(3) for s in ("bare", "stage")]
    cmp = {
        "bare": {"n": 3, "min": 100.0, "median": 100.0},
        "stage": {"n": 3, "min": 94.0, "median": 94.0},
        "ratio_of_medians": 0.94,
        "ratio": "median images_per_second of stage ÷ median images_per_second of bare",
    }
    return {
        "training": {
            "method": "like-for-like",
            "workload": {"model": "seed_cnn", "epochs": 3},
            "runs": runs,
            "images_per_second": cmp,
            "fit_seconds": cmp,
        },
        "input_pipeline": {"headroom": 2573.8, "data_path_images_per_second": 5e6, "model_images_per_second": 1979.0},
        "default_run": {
            "make_run": {"measured": False, "why": "no record"},
            "training": {
                "model": "fast_net",
                "epochs": 14,
                "train_samples": 48000,
                "backend": "tensorflow",
                "device": "cpu",
                "precision": "float32",
                "fit_seconds": 935.0,
                "images_per_second": 988.0,
                "val_accuracy": 0.935,
            },
            "deploy_variant": "int8",
            "test_samples": 10000,
            "keras_test_accuracy": 0.9305,
            "variants": _variants(int8_bytes),
            "mlflow_logging_s": 4.1,
            "mlflow_logging_over_training": 4.1 / 935.0,
        },
        "frontier": {
            "points": [
                {
                    "label": "seed 2 min",
                    "model": "seed_cnn",
                    "budget_minutes": 2,
                    "wall_seconds": 120.0,
                    "test_accuracy": 0.91,
                    "on_frontier": True,
                }
            ],
            "default": {"label": "default", "model": "fast_net", "wall_seconds": 935.0, "test_accuracy": 0.9264},
        },
    }


def _row(md: str, figure: str) -> str:
    return next(line for line in md.splitlines() if line.startswith(f"| {figure}"))


def test_a_missed_target_renders_no_and_is_never_rounded_into_a_pass():
    md = report.results_md(_synthetic())
    int8 = _row(md, "default run: fp32 ÷ int8 `.tflite` size")
    assert "3.896" in int8 and "3.90 " not in int8 and int8.endswith("| **no** |")
    assert _row(md, "train stage ÷ bare Keras").endswith("| **no** |")  # 0.94 < 0.95
    assert _row(md, "default run: MLflow logging").endswith("| yes |")
    assert "**default run: fp32 ÷ int8 `.tflite` size**" in md.split("## Missed targets")[1]


def test_a_met_target_renders_yes():
    md = report.results_md(_synthetic(int8_bytes=300_000))  # 3.983
    assert _row(md, "default run: fp32 ÷ int8 `.tflite` size").endswith("| yes |")


def test_old_schema_sections_are_labelled_and_not_judged():
    md = report.results_md(_synthetic())
    row = _row(md, "input pipeline headroom (old method, not yet re-measured")
    assert row.endswith("| not judged: old method, not yet re-measured |")


def test_frontier_and_readme_block_render():
    results = _synthetic()
    md = report.results_md(results)
    assert "| seed 2 min | seed_cnn | 2.0 | – | 2.0 | 0.9100 | n/a | yes |" in md
    assert "| default (default) | fast_net | – (params.yaml epochs) | – | 15.6 | 0.9264 | n/a | – |" in md
    readme = report.readme_text(results, f"# x\n\n## Results\n\n{report.BEGIN}\nold\n{report.END}\n\n## Next\n")
    assert "old" not in readme.split(report.BEGIN)[1] and "3.896 (target ≥ 3.9: missed)" in readme
    assert readme.endswith(f"{report.END}\n\n## Next\n")


def test_serving_renders_each_body_and_both_verdicts():
    level = {"clients": 32, "images_per_request": 1, "requests_per_second": 2500.0, "p50_ms": 9.0, "p99_ms": 30.0}
    serving = {
        "variant": "int8",
        "levels": [{**level, "body": "JSON"}, {**level, "body": "npy", "requests_per_second": 1500.0}],
        "target_single_32_clients": {"met": True, "body": "JSON", "requests_per_second": 2500.0, "p99_ms": 30.0,
                                     "by_body": {"JSON": {"met": True}, "npy": {"met": False}}},
        "target_batch32_share_of_raw": {"body": "npy", "share": 0.4999, "met": False, "images_per_second": 4000.0},
    }
    md = "\n".join(report.serving_details(serving))
    assert "1 image(s) per JSON request:" in md and "1 image(s) per npy request:" in md
    assert "(0.4999): **no**" in md and "yes (judged on JSON)" in md
    rows = report.readme_block({**_synthetic(), "serving": serving})
    assert any("0.4999 of the raw batch-32 rate (target ≥ 0.5: missed)" in r for r in rows)


def test_readme_without_markers_is_an_error():
    with pytest.raises(SystemExit):
        report.readme_text({}, "# no markers\n")


def test_check_reports_a_difference(tmp_path, capsys):
    stale = tmp_path / "RESULTS.md"
    stale.write_text("old\n")
    assert report.check({stale: "new\n"}) == 1
    assert "-old" in capsys.readouterr().out
    assert report.check({stale: "old\n"}) == 0


@pytest.mark.parametrize(
    ("value", "bound", "shown"),
    [
        (3.8964, (">=", 3.9), "3.896"),
        (0.94999, (">=", 0.95), "0.94999"),
        (3.95, (">=", 3.9), "3.95"),
        (1.2, None, "1.20"),
    ],
)
def test_num_adds_digits_until_the_comparison_agrees(value, bound, shown):
    assert num(value, 2, bound) == shown

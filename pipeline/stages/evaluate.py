"""Evaluate stage: every variant on the test split, comparison with the registry champion, blessing decision.

Command: `python -m pipeline.stages.evaluate` (what dvc.yaml runs) or `mlops evaluate`.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from pipeline.core import io
from pipeline.core.command import DEFAULT_PARAMS, ParamsOpt, call, load, path_or
from pipeline.core.config import EvaluateConfig, RegisterConfig
from pipeline.ml.conversion import VARIANTS


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrix: rows are actual classes, columns predicted."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true.astype(np.int64), y_pred.astype(np.int64)), 1)
    return cm


def per_class(cm: np.ndarray, class_names: list[str]) -> dict[str, dict[str, float]]:
    """Precision and recall of every class from the confusion matrix."""
    tp = np.diag(cm).astype(float)
    precision = tp / np.maximum(cm.sum(axis=0), 1)
    recall = tp / np.maximum(cm.sum(axis=1), 1)
    return {
        name: {"precision": round(float(p), 4), "recall": round(float(r), 4)}
        for name, p, r in zip(class_names, precision, recall, strict=True)
    }


def mcnemar(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> dict:
    """Exact McNemar test on the discordant pairs: b = only A right, c = only B right."""
    from scipy.stats import binomtest

    a_right, b_right = pred_a == y_true, pred_b == y_true
    b, c = int(np.sum(a_right & ~b_right)), int(np.sum(~a_right & b_right))
    p = 1.0 if b + c == 0 else float(binomtest(min(b, c), b + c, 0.5).pvalue)
    return {"only_champion_right": b, "only_challenger_right": c, "p_value": round(p, 6)}


def decide(cfg: EvaluateConfig, acc: dict[str, float], classes: dict, champion: dict | None) -> dict:
    """Blessed only if every check passes; each check reports what it saw."""
    chosen = acc[cfg.deploy_variant]
    drop = acc["fp32"] - chosen
    worst = min(classes.items(), key=lambda kv: kv[1]["recall"])
    checks = [
        (
            "min_accuracy",
            chosen >= cfg.min_accuracy,
            f"{cfg.deploy_variant} accuracy {chosen:.4f} vs minimum {cfg.min_accuracy}",
        ),
        (
            "max_drop_vs_fp32",
            drop <= cfg.max_drop_vs_fp32 + 1e-12,
            f"drop vs fp32 {drop * 100:+.2f} points vs limit {cfg.max_drop_vs_fp32 * 100:.2f}",
        ),
        (
            "per_class_floor",
            worst[1]["recall"] >= cfg.per_class_floor,
            f"lowest recall {worst[1]['recall']:.4f} ({worst[0]}) vs floor {cfg.per_class_floor}",
        ),
    ]
    if champion is None:
        checks.append(("vs_champion", True, "no champion in the registry yet"))
    elif not champion.get("comparable", False):
        checks.append(("vs_champion", True, f"champion v{champion['version']} not comparable: {champion['reason']}"))
    else:
        worse = champion["accuracy"] > chosen and champion["mcnemar"]["p_value"] < cfg.mcnemar_alpha
        checks.append(
            (
                "vs_champion",
                not worse,
                (
                    f"champion v{champion['version']} {champion['accuracy']:.4f} vs challenger {chosen:.4f}, "
                    f"McNemar p={champion['mcnemar']['p_value']:.4g} (alpha {cfg.mcnemar_alpha})"
                ),
            )
        )
    reasons = [{"check": name, "passed": bool(ok), "detail": detail} for name, ok, detail in checks]
    return {"blessed": all(r["passed"] for r in reasons), "deploy_variant": cfg.deploy_variant, "reasons": reasons}


def _keras_scores(model_path: Path, x: np.ndarray, batch_size: int, runs: int) -> tuple[np.ndarray, float]:
    from pipeline.ml.models import load_float32

    model = load_float32(model_path)
    logits = np.asarray(model.predict(x, batch_size=batch_size, verbose=0))
    from pipeline.ml.timing import median_latency_ms

    one = x[:1].astype("float32")
    return logits, median_latency_ms(lambda: model(one, training=False), runs)


def _champion(
    registry: RegisterConfig, x: np.ndarray, y: np.ndarray, chosen_pred: np.ndarray, batch_size: int
) -> dict | None:
    """The registry champion scored on the same test split (None when there is no champion yet)."""
    from pipeline.registry.champion import IncompleteVersion, load_by_alias

    try:
        champion = load_by_alias(registry.model_name)
    except IncompleteVersion as exc:
        return {"version": exc.version, "comparable": False, "reason": str(exc)}
    if champion is None:
        return None
    model = champion.model()
    if model.input_shape != x.shape[1:]:
        return {
            "version": champion.version,
            "comparable": False,
            "reason": f"input shape {model.input_shape} != test images {x.shape[1:]}",
        }
    pred = model.predict(x, batch_size).argmax(axis=1)
    return {
        "version": champion.version,
        "comparable": True,
        "accuracy": round(float(np.mean(pred == y)), 4),
        "mcnemar": mcnemar(y, pred, chosen_pred),
    }


def _write_confusion_csv(path: Path, y: np.ndarray, pred: np.ndarray, names: list[str]) -> None:
    with io.atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["actual", "predicted"])
        writer.writerows((names[a], names[p]) for a, p in zip(y, pred, strict=True))


def _predict_all(
    cfg: EvaluateConfig, x: np.ndarray, model_path: Path, compressed_dir: Path
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Predicted classes and batch-1 latency (ms) of the Keras models and of every .tflite variant."""
    from pipeline.ml.tflite import TFLiteModel

    predictions, latency = {}, {}
    runs = min(cfg.latency_runs, 50)
    predictions["keras"], latency["keras"] = _keras_scores(Path(model_path), x, cfg.batch_size, runs)
    predictions["keras_pruned"], latency["keras_pruned"] = _keras_scores(
        Path(compressed_dir) / "pruned.keras", x, cfg.batch_size, runs
    )
    for variant in VARIANTS:
        model = TFLiteModel(Path(compressed_dir) / f"{variant}.tflite")
        predictions[variant] = model.predict(x, cfg.batch_size)
        latency[variant] = model.latency_ms(x, cfg.latency_runs)
    return {k: v.argmax(axis=1) for k, v in predictions.items()}, latency


def run(
    cfg: EvaluateConfig,
    registry: RegisterConfig,
    data_dir: Path,
    model_path: Path,
    compressed_dir: Path,
    metrics_path: Path,
    report_path: Path,
    plots_dir: Path,
) -> dict:
    """Score every variant, compare the deploy variant with the registry champion, decide the blessing.

    Reads: `data_dir/stats.json` and test shards, `model_path`, `compressed_dir/` (pruned.keras, *.tflite), the
    registry's champion (MLflow). Writes: `metrics_path`, `report_path` (per-class scores, confusion matrix,
    champion comparison, decision with reasons) and `plots_dir/` (confusion_matrix.png, confusion.csv).
    """
    from pipeline.ml import plots

    names = io.read_json(Path(data_dir) / "stats.json")["class_names"]
    x, y = io.read_split(data_dir, "test")
    x = x.astype(np.float32)
    labels, latency = _predict_all(cfg, x, model_path, compressed_dir)
    acc = {k: float(np.mean(p == y)) for k, p in labels.items()}

    chosen = labels[cfg.deploy_variant]
    cm = confusion(y, chosen, len(names))
    classes = per_class(cm, names)
    champion = _champion(registry, x, y, chosen, cfg.batch_size)
    decision = decide(cfg, acc, classes, champion)

    title = f"{cfg.deploy_variant} on test ({len(y)} images): accuracy {acc[cfg.deploy_variant]:.4f}"
    plots.confusion_matrix(cm, names, Path(plots_dir) / "confusion_matrix.png", title)
    _write_confusion_csv(Path(plots_dir) / "confusion.csv", y, chosen, names)
    metrics = {
        "test_samples": len(y),
        "deploy_variant": cfg.deploy_variant,
        "accuracy": round(acc[cfg.deploy_variant], 4),
        "blessed": decision["blessed"],
        "variants": {k: {"accuracy": round(acc[k], 4), "latency_ms_batch1": round(latency[k], 4)} for k in acc},
        "champion_accuracy": champion.get("accuracy") if champion else None,
    }
    report = {**metrics, "per_class": classes, "confusion_matrix": cm.tolist(), "champion": champion}
    report["decision"] = decision
    io.write_json(report_path, report)
    io.write_json(metrics_path, metrics)
    return report


def command(
    params: ParamsOpt = DEFAULT_PARAMS,
    data: Annotated[Path | None, typer.Option(help="Prepared shards directory (default: paths.prepared).")] = None,
    model: Annotated[Path | None, typer.Option(help="Trained Keras model (default: paths.model).")] = None,
    compressed: Annotated[
        Path | None, typer.Option(help="Directory of .tflite variants (default: paths.compressed).")
    ] = None,
    metrics: Annotated[Path | None, typer.Option(help="Metrics JSON (default: paths.evaluate_metrics).")] = None,
    report: Annotated[
        Path | None, typer.Option(help="Decision report JSON, blessed + reasons (default: paths.evaluation_report).")
    ] = None,
    plots: Annotated[
        Path | None, typer.Option(help="Directory for confusion matrix PNG/CSV (default: paths.evaluate_plots).")
    ] = None,
) -> None:
    """Score every variant on the test split, compare with the registry champion, write the blessing decision."""
    cfg = load(params)
    paths, variant = cfg.paths, cfg.evaluate.deploy_variant
    result = call(
        run,
        cfg.evaluate,
        registry=cfg.register_,
        data_dir=path_or(data, paths.prepared),
        model_path=path_or(model, paths.model),
        compressed_dir=path_or(compressed, paths.compressed),
        metrics_path=path_or(metrics, paths.evaluate_metrics),
        report_path=path_or(report, paths.evaluation_report),
        plots_dir=path_or(plots, paths.evaluate_plots),
    )
    decision = result["decision"]
    typer.echo(f"{variant} accuracy={result['variants'][variant]['accuracy']:.4f} blessed={decision['blessed']}")
    for reason in decision["reasons"]:
        typer.echo(f"  [{'ok' if reason['passed'] else 'FAIL'}] {reason['check']}: {reason['detail']}")


if __name__ == "__main__":
    typer.run(command)

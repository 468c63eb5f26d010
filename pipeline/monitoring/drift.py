"""Drift statistics for the monitoring loop (pure numpy/scipy; no I/O).

A *reference profile* summarises what the champion was trained on: samples of a few per-image features (for
two-sample KS tests) and the champion's predicted-class distribution (for PSI / chi-square). `assess` compares one
incoming batch with it:

* input drift  - KS test per feature (mean brightness, contrast = pixel std, sharpness = mean |Laplacian|); a feature
  drifts only when p < drift_p_value AND the KS statistic >= KS_MIN_STAT, so huge batches do not flag trivial shifts;
* output drift - PSI of the predicted-class distribution > psi_threshold (chi-square p-value is reported only: with
  hundreds of images it rejects for shifts too small to matter);
* degradation  - labelled batches only: champion accuracy minus batch accuracy > max_accuracy_drop.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from pipeline.core.config import MonitorConfig

FEATURES = ("mean", "std", "sharpness")
KS_MIN_STAT = 0.1  # minimum KS effect size for a feature to count as drifted
_CHUNK = 4096  # images per block for float32 temporaries


# --------------------------------------------------------------------------------------------- features


def image_features(x: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image mean and std of all pixels, and sharpness = mean |4-neighbour Laplacian| of the grey image.

    `x` is (N, H, W[, C]) in pixel units (0-255); returns float64 arrays of length N.
    """
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4:
        raise ValueError(f"expected images shaped (N, H, W, C), got {x.shape}")
    n = len(x)
    out = {name: np.zeros(n, np.float64) for name in FEATURES}
    for start in range(0, n, _CHUNK):
        sl = slice(start, start + _CHUNK)
        block = x[sl].astype(np.float32)
        flat = block.reshape(len(block), -1)
        out["mean"][sl] = flat.mean(axis=1, dtype=np.float64)
        out["std"][sl] = flat.std(axis=1, dtype=np.float64)
        grey = block.mean(axis=-1)
        if grey.shape[1] >= 3 and grey.shape[2] >= 3:
            lap = (
                4 * grey[:, 1:-1, 1:-1]
                - grey[:, :-2, 1:-1]
                - grey[:, 2:, 1:-1]
                - grey[:, 1:-1, :-2]
                - grey[:, 1:-1, 2:]
            )
            out["sharpness"][sl] = np.abs(lap).reshape(len(block), -1).mean(axis=1, dtype=np.float64)
    return out


def _class_fractions(pred: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred).astype(np.int64).ravel()
    if len(pred) and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"predicted classes must lie in [0, {num_classes}), found {pred.min()}..{pred.max()}")
    counts = np.bincount(pred, minlength=num_classes)
    frac = counts / counts.sum() if counts.sum() else np.zeros(num_classes)
    return counts, frac


def reference_profile(
    x_ref: np.ndarray,
    pred_ref: np.ndarray,
    num_classes: int,
    sample: int = 5000,
    seed: int = 0,
    y_ref: np.ndarray | None = None,
    accuracy: float | None = None,
) -> dict:
    """JSON-able reference: feature samples, predicted-class distribution and (optional) reference accuracy.

    At most `sample` images (seeded choice) are summarised; `pred_ref` (and `y_ref`) align with `x_ref`.
    The accuracy is `accuracy` when given, else computed from `y_ref` when given, else None.
    """
    x_ref, pred_ref = np.asarray(x_ref), np.asarray(pred_ref)
    if len(x_ref) != len(pred_ref) or (y_ref is not None and len(y_ref) != len(x_ref)):
        raise ValueError(f"x_ref ({len(x_ref)}), pred_ref ({len(pred_ref)}) and y_ref must have the same length")
    if len(x_ref) == 0:
        raise ValueError("cannot build a reference profile from zero images")
    idx = np.arange(len(x_ref))
    if len(idx) > sample:
        idx = np.sort(np.random.default_rng(seed).choice(len(idx), size=sample, replace=False))
    feats = image_features(x_ref[idx])
    counts, frac = _class_fractions(pred_ref[idx], num_classes)
    if accuracy is None and y_ref is not None:
        accuracy = float(np.mean(pred_ref[idx] == np.asarray(y_ref)[idx]))
    return {
        "n": len(idx),
        "num_classes": int(num_classes),
        "image_shape": [int(d) for d in x_ref.shape[1:]],
        "features": {k: [round(float(v), 4) for v in feats[k]] for k in FEATURES},
        "pred_counts": [int(c) for c in counts],
        "pred_frac": [float(f) for f in frac],
        "accuracy": None if accuracy is None else float(accuracy),
    }


# --------------------------------------------------------------------------------------------- statistics


def _fractions(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    if (values < 0).any():
        raise ValueError("fractions/counts must be non-negative")
    total = values.sum()
    return values / total if total > 0 else np.full(len(values), 1.0 / max(len(values), 1))


def psi(expected_frac: np.ndarray, actual_frac: np.ndarray, eps: float = 1e-4) -> float:
    """Population stability index sum((a - e) * ln(a / e)); inputs are normalised, then floored at `eps`.

    Rule of thumb: < 0.1 stable, 0.1-0.2 moderate, > 0.2 significant shift.
    """
    e, a = _fractions(expected_frac), _fractions(actual_frac)
    if e.shape != a.shape:
        raise ValueError(f"psi: {len(e)} expected bins but {len(a)} actual bins")
    e, a = np.maximum(e, eps), np.maximum(a, eps)
    return float(np.sum((a - e) * np.log(a / e)))


def chi_square(expected_frac: np.ndarray, observed_counts: np.ndarray, eps: float = 1e-4) -> float:
    """Goodness-of-fit p-value of `observed_counts` against `expected_frac` (empty classes floored at `eps`)."""
    observed = np.asarray(observed_counts, dtype=np.float64).ravel()
    e = _fractions(expected_frac)
    if e.shape != observed.shape:
        raise ValueError(f"chi_square: {len(e)} expected classes but {len(observed)} observed")
    total = observed.sum()
    if total <= 0:
        return 1.0
    e = np.maximum(e, eps)
    expected = e / e.sum() * total
    return float(stats.chisquare(observed, expected).pvalue)


def ks(ref_values: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov (statistic, p-value); (0.0, 1.0) when either sample is empty."""
    ref_values, values = np.asarray(ref_values, np.float64), np.asarray(values, np.float64)
    if len(ref_values) == 0 or len(values) == 0:
        return 0.0, 1.0
    res = stats.ks_2samp(ref_values, values)
    return float(res.statistic), float(res.pvalue)


# --------------------------------------------------------------------------------------------- decision


def input_drift(profile: dict, x_batch: np.ndarray, cfg: MonitorConfig) -> tuple[dict, bool, list[str]]:
    """KS test per image feature against the reference samples: ({feature: {stat, p}}, drifted, reasons)."""
    feats = image_features(x_batch)
    ks_out, drifted, reasons = {}, False, []
    for name, ref in profile["features"].items():
        stat, p = ks(np.asarray(ref), feats[name])
        ks_out[name] = {"stat": stat, "p": p}
        if p < cfg.drift_p_value and stat >= KS_MIN_STAT:
            drifted = True
            reasons.append(
                f"input drift in {name}: KS stat {stat:.3f} >= {KS_MIN_STAT}, p={p:.2g} < "
                f"{cfg.drift_p_value} (batch median {np.median(feats[name]):.1f} vs reference "
                f"{np.median(ref):.1f})"
            )
    return ks_out, drifted, reasons


def prediction_drift(profile: dict, pred_batch: np.ndarray, cfg: MonitorConfig) -> tuple[dict, list[str]]:
    """PSI (decides) and chi-square p-value (reported) of the predicted-class mix against the reference."""
    counts, frac = _class_fractions(pred_batch, int(profile["num_classes"]))
    psi_value = psi(profile["pred_frac"], frac) if len(pred_batch) else 0.0
    out = {
        "psi": psi_value,
        "chi2_p": chi_square(profile["pred_frac"], counts),
        "pred_frac": [float(f) for f in frac],
        "drifted": psi_value > cfg.psi_threshold,
    }
    reasons = []
    if out["drifted"]:
        top = int(np.argmax(frac - np.asarray(profile["pred_frac"])))
        reasons.append(
            f"prediction drift: PSI {psi_value:.3f} > {cfg.psi_threshold} (class {top} predicted for "
            f"{frac[top]:.1%} of the batch vs {profile['pred_frac'][top]:.1%} in the reference)"
        )
    return out, reasons


def _degradation(
    profile: dict,
    pred_batch: np.ndarray,
    y_batch: np.ndarray | None,
    champion_accuracy: float | None,
    cfg: MonitorConfig,
) -> tuple[dict, list[str]]:
    """Batch accuracy against the baseline (champion_accuracy, else the profile's): accuracy, baseline, drop."""
    accuracy = (
        None
        if y_batch is None or len(pred_batch) == 0
        else float(np.mean(pred_batch.astype(np.int64) == np.asarray(y_batch).astype(np.int64).ravel()))
    )
    baseline = champion_accuracy if champion_accuracy is not None else profile.get("accuracy")
    drop = None if accuracy is None or baseline is None else float(baseline - accuracy)
    degraded = drop is not None and drop > cfg.max_accuracy_drop
    reasons = []
    if degraded:
        reasons.append(
            f"accuracy {accuracy:.4f} is {drop:.4f} below the baseline {baseline:.4f} "
            f"(max drop {cfg.max_accuracy_drop})"
        )
    return {
        "accuracy": accuracy,
        "baseline_accuracy": None if baseline is None else float(baseline),
        "accuracy_drop": drop,
        "degraded": bool(degraded),
    }, reasons


def assess(
    profile: dict,
    x_batch: np.ndarray,
    pred_batch: np.ndarray,
    y_batch: np.ndarray | None,
    champion_accuracy: float | None,
    cfg: MonitorConfig,
) -> dict:
    """Compare one batch with the reference profile; see the module docstring for the rules.

    The accuracy baseline is `champion_accuracy` (e.g. the champion's test accuracy) or, when None, the profile's.
    """
    x_batch, pred_batch = np.asarray(x_batch), np.asarray(pred_batch)
    n = len(x_batch)
    if len(pred_batch) != n or (y_batch is not None and len(y_batch) != n):
        raise ValueError(
            f"batch of {n} images has {len(pred_batch)} predictions"
            + ("" if y_batch is None else f" and {len(y_batch)} labels")
        )
    ks_out, ks_drift, input_reasons = input_drift(profile, x_batch, cfg)
    prediction, prediction_reasons = prediction_drift(profile, pred_batch, cfg)
    quality, quality_reasons = _degradation(profile, pred_batch, y_batch, champion_accuracy, cfg)
    return {
        "n": n,
        "psi": prediction["psi"],
        "chi2_p": prediction["chi2_p"],
        "ks": ks_out,
        "pred_frac": prediction["pred_frac"],
        "accuracy": quality["accuracy"],
        "baseline_accuracy": quality["baseline_accuracy"],
        "accuracy_drop": quality["accuracy_drop"],
        "drifted": bool(ks_drift or prediction["drifted"]),
        "degraded": quality["degraded"],
        "reasons": input_reasons + prediction_reasons + quality_reasons,
    }

"""The monitor's drift signals, named, with value and threshold (pure numpy; no I/O).

Every batch's decision record lists its signals as {"name", "value", "threshold", "fired", ...}:

* `input.<feature>` - KS statistic of an image statistic (mean, std, sharpness) vs the training reference; fires when
  the statistic >= drift.KS_MIN_STAT and p < monitor.drift_p_value;
* `class_mix.psi`   - PSI of the predicted-class mix vs the champion's on the training reference (chi-square p is
  reported alongside); fires above monitor.psi_threshold (unlabelled batches: and chi-square p < drift_p_value);
* `confidence.low_share` - share of answers whose max probability is below monitor.low_confidence, minus that share
  on the reference's held-out split; fires above monitor.max_low_confidence_increase (and binomial p <
  drift_p_value);
* `accuracy.drop`   - labelled batches only: the champion's baseline accuracy minus the batch's; fires above
  monitor.max_accuracy_drop.

`assess_unlabelled` is the decision for a batch without labels (captured traffic): input, class-mix and confidence
signals, no accuracy.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from pipeline.core.config import MonitorConfig
from pipeline.monitoring import drift


def _signal(name: str, value: float | None, threshold: float, fired: bool, **extra) -> dict:
    return {"name": name, "value": value, "threshold": threshold, "fired": bool(fired), **extra}


def input_signals(ks_out: dict, cfg: MonitorConfig) -> list[dict]:
    """One `input.<feature>` signal per KS result ({feature: {"stat", "p"}} of drift.input_drift)."""
    return [
        _signal(
            f"input.{name}",
            r["stat"],
            drift.KS_MIN_STAT,
            r["p"] < cfg.drift_p_value and r["stat"] >= drift.KS_MIN_STAT,
            p=r["p"],
            p_threshold=cfg.drift_p_value,
        )
        for name, r in ks_out.items()
    ]


def class_mix_signal(psi_value: float, chi2_p: float, cfg: MonitorConfig, significant: bool = False) -> dict:
    """`class_mix.psi`: PSI of the predicted-class mix decides, chi-square p-value reported; with `significant` the
    p-value must also be below drift_p_value (captured files can be small, and PSI of a few images is noise).
    """
    fires = psi_value > cfg.psi_threshold and (not significant or chi2_p < cfg.drift_p_value)
    return _signal("class_mix.psi", psi_value, cfg.psi_threshold, fires, chi2_p=chi2_p)


def labelled_signals(result: dict, cfg: MonitorConfig) -> list[dict]:
    """The signals of a labelled batch's drift.assess result (input, class mix, accuracy drop)."""
    drop = result.get("accuracy_drop")
    return [
        *input_signals(result["ks"], cfg),
        class_mix_signal(result["psi"], result["chi2_p"], cfg),
        _signal("accuracy.drop", drop, cfg.max_accuracy_drop, bool(result.get("degraded"))),
    ]


def low_confidence_share(max_prob, threshold: float) -> float | None:
    """Share of `max_prob` values below `threshold`; None when there are none."""
    values = np.asarray(max_prob, np.float64).ravel()
    return float(np.mean(values < threshold)) if len(values) else None


def confidence_signal(profile: dict, probs: np.ndarray, cfg: MonitorConfig) -> tuple[dict, np.ndarray]:
    """(`confidence.low_share` signal, per-image max probability). It fires when the increase exceeds the allowed one
    and a one-sided binomial test (batch count vs the reference share) has p < drift_p_value, so a few unsure
    answers in a small captured file are no alarm. Without a reference the reference share counts as 0.
    """
    max_prob = np.asarray(probs, np.float64).max(axis=1) if len(probs) else np.zeros(0)
    share = low_confidence_share(max_prob, cfg.low_confidence) or 0.0
    reference = (profile.get("confidence") or {}).get("max_prob") or []
    ref_share = low_confidence_share(reference, cfg.low_confidence) or 0.0
    increase = share - ref_share
    k, n_ref = int(np.sum(max_prob < cfg.low_confidence)), len(reference)
    p0 = (ref_share * n_ref + 1) / (n_ref + 2)  # Laplace: a reference sample with no unsure answer is not a share of 0
    p = float(stats.binomtest(k, len(max_prob), p0, alternative="greater").pvalue) if len(max_prob) else 1.0
    signal = _signal(
        "confidence.low_share",
        increase,
        cfg.max_low_confidence_increase,
        increase > cfg.max_low_confidence_increase and p < cfg.drift_p_value,
        p=p,
        share=share,
        reference_share=ref_share,
        below=cfg.low_confidence,
        reference_split=(profile.get("confidence") or {}).get("split"),
    )
    return signal, max_prob


def _reason(signal: dict) -> str:
    value, threshold = signal["value"], signal["threshold"]
    if signal["name"] == "confidence.low_share":
        return (
            f"low confidence: {signal['share']:.1%} of answers below max prob {signal['below']:g} vs "
            f"{signal['reference_share']:.1%} on the reference ({value:+.3f} > {threshold:g})"
        )
    return f"{signal['name']}: {value:.3f} > {threshold:g}"


def fired(signals: list[dict]) -> list[str]:
    """The names of the signals that fired."""
    return [s["name"] for s in signals if s["fired"]]


def assess_unlabelled(
    profile: dict, x_batch: np.ndarray, pred_batch: np.ndarray, probs: np.ndarray, cfg: MonitorConfig
) -> dict:
    """Compare one unlabelled batch with the reference profile: input KS, class-mix PSI and low-confidence share.

    Returns the drift.assess keys (accuracy None, degraded False) plus "labelled": False, "signals", "fired",
    "max_prob" (per image, for the labelling request) and "low_confidence_share".
    """
    x_batch, pred_batch, probs = np.asarray(x_batch), np.asarray(pred_batch), np.asarray(probs)
    n = len(x_batch)
    if len(pred_batch) != n or len(probs) != n:
        raise ValueError(f"batch of {n} images has {len(pred_batch)} predictions and {len(probs)} probability rows")
    ks_out, _, input_reasons = drift.input_drift(profile, x_batch, cfg)
    prediction, prediction_reasons = drift.prediction_drift(profile, pred_batch, cfg)
    confidence, max_prob = confidence_signal(profile, probs, cfg)
    signals = [
        *input_signals(ks_out, cfg),
        class_mix_signal(prediction["psi"], prediction["chi2_p"], cfg, significant=True),
        confidence,
    ]
    names = fired(signals)
    confidence_reasons = [_reason(confidence)] if confidence["fired"] else []
    return {
        "n": n,
        "labelled": False,
        "psi": prediction["psi"],
        "chi2_p": prediction["chi2_p"],
        "ks": ks_out,
        "pred_frac": prediction["pred_frac"],
        "low_confidence_share": confidence["share"],
        "accuracy": None,
        "baseline_accuracy": None,
        "accuracy_drop": None,
        "drifted": bool(names),
        "degraded": False,
        "signals": signals,
        "fired": names,
        "reasons": input_reasons + (prediction_reasons if signals[-2]["fired"] else []) + confidence_reasons,
        "max_prob": [round(float(v), 4) for v in max_prob],
    }

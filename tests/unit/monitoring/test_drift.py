"""Drift statistics: PSI / chi-square / KS on known inputs, image features, and `assess` on clean vs drifted batches
of structured synthetic images (textured background + a bright band whose row encodes the class)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage

from pipeline.core.config import MonitorConfig
from pipeline.monitoring import drift, simulate

CFG = MonitorConfig()  # drift_p_value 0.01, psi_threshold 0.2, max_accuracy_drop 0.03


def band_images(n_per_class: int, n_classes: int = 3, shape=(28, 28, 1), seed: int = 0):
    """Smooth-noise texture on a random background level, plus a bright horizontal band at a class-specific row."""
    rng = np.random.default_rng(seed)
    h, _, _ = shape
    y = rng.permutation(np.repeat(np.arange(n_classes, dtype=np.uint8), n_per_class))
    n = len(y)
    texture = ndimage.gaussian_filter(rng.normal(0, 1, size=(n, *shape)), sigma=(0, 1, 1, 0))
    x = rng.uniform(40, 90, (n, 1, 1, 1)) + texture / texture.std() * rng.uniform(20, 40, (n, 1, 1, 1))
    band = h // n_classes
    rows = np.arange(h)[None, :, None, None]
    lo = (y.astype(int) * band)[:, None, None, None]
    x = x + ((rows >= lo) & (rows < lo + band)) * rng.uniform(70, 130, (n, 1, 1, 1))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8), y


def band_predict(x: np.ndarray, n_classes: int = 3) -> np.ndarray:
    """A 'model' that works on band images: the class whose band is brightest."""
    band = x.shape[1] // n_classes
    means = np.stack([x[:, k * band:(k + 1) * band].mean(axis=(1, 2, 3)) for k in range(n_classes)], axis=1)
    return means.argmax(axis=1)


@pytest.fixture(scope="module")
def profile():
    x, y = band_images(700, seed=1)
    return drift.reference_profile(x, band_predict(x), 3, sample=5000, seed=0, y_ref=y)


# --------------------------------------------------------------------------------------------- statistics

def test_psi_known_values():
    assert drift.psi([0.5, 0.5], [0.5, 0.5]) == pytest.approx(0.0)
    expected = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert drift.psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(expected)
    assert drift.psi([50, 50], [25, 75]) == pytest.approx(expected)  # counts are normalised
    # an empty bin is floored at eps, so the value stays finite (and large)
    empty = drift.psi([0.5, 0.5], [0.0, 1.0])
    assert math.isfinite(empty) and empty > 3
    assert drift.psi([0.5, 0.5], [0.0, 1.0], eps=1e-2) < empty
    with pytest.raises(ValueError):
        drift.psi([0.5, 0.5], [0.2, 0.3, 0.5])


def test_chi_square_known_values():
    # statistic (10^2 + 0 + 10^2) / 20 = 10 with 2 degrees of freedom: p = exp(-10 / 2)
    assert drift.chi_square([1 / 3] * 3, [30, 20, 10]) == pytest.approx(math.exp(-5), rel=1e-6)
    assert drift.chi_square([0.2, 0.3, 0.5], [20, 30, 50]) == pytest.approx(1.0)
    assert drift.chi_square([0.5, 0.5, 0.0], [50, 40, 10]) < 1e-6  # an impossible class is floored, not 0/0
    assert drift.chi_square([0.5, 0.5], [0, 0]) == 1.0


def test_ks_known_values():
    rng = np.random.default_rng(0)
    a = rng.normal(size=400)
    assert drift.ks(a, a) == (pytest.approx(0.0), pytest.approx(1.0))
    stat, p = drift.ks([0, 1, 2, 3, 4], [10, 11, 12, 13, 14])
    assert stat == pytest.approx(1.0) and p < 0.01
    stat, p = drift.ks(a, rng.normal(loc=1.0, size=400))
    assert 0.3 < stat < 0.5 and p < 1e-10
    assert drift.ks([], [1.0]) == (0.0, 1.0)


def test_image_features_values():
    flat = np.full((1, 6, 6, 1), 100, np.uint8)
    checker = ((np.indices((6, 6)).sum(axis=0) % 2) * 255).astype(np.uint8)[None, ..., None]
    f = drift.image_features(np.concatenate([flat, checker]))
    assert f["mean"].tolist() == pytest.approx([100.0, 127.5])
    assert f["std"].tolist() == pytest.approx([0.0, 127.5])
    assert f["sharpness"].tolist() == pytest.approx([0.0, 4 * 255.0])  # |4c - 4 neighbours| = 1020 everywhere
    # (N, H, W) reads as one channel; RGB sharpness uses the grey image
    assert drift.image_features(checker[..., 0])["sharpness"][0] == pytest.approx(1020.0)
    rgb = np.repeat(checker, 3, axis=-1)
    assert drift.image_features(rgb)["sharpness"][0] == pytest.approx(1020.0)
    with pytest.raises(ValueError):
        drift.image_features(np.zeros((2, 4), np.uint8))


def test_reference_profile_is_json_sampled_and_seeded():
    x, y = band_images(100, seed=3)
    pred = band_predict(x)
    prof = drift.reference_profile(x, pred, 3, sample=120, seed=7, y_ref=y)
    json.dumps(prof)  # JSON-able as is
    assert prof["n"] == 120 and all(len(v) == 120 for v in prof["features"].values())
    assert set(prof["features"]) == set(drift.FEATURES)
    assert sum(prof["pred_counts"]) == 120 and sum(prof["pred_frac"]) == pytest.approx(1.0)
    assert prof["accuracy"] == pytest.approx(1.0)
    assert prof == drift.reference_profile(x, pred, 3, sample=120, seed=7, y_ref=y)
    assert prof["features"] != drift.reference_profile(x, pred, 3, sample=120, seed=8)["features"]
    assert drift.reference_profile(x, pred, 3)["accuracy"] is None
    with pytest.raises(ValueError):
        drift.reference_profile(x, pred[:-1], 3)


# --------------------------------------------------------------------------------------------- assess

@pytest.mark.parametrize("seed", [100, 101, 102, 103, 104])
def test_clean_batches_from_the_same_distribution_are_not_flagged(profile, seed):
    x, y = band_images(170, seed=seed)
    result = drift.assess(profile, x, band_predict(x), y, 0.99, CFG)
    assert not result["drifted"] and not result["degraded"], result["reasons"]
    assert result["reasons"] == []
    assert result["n"] == 510 and result["accuracy"] == pytest.approx(1.0)
    assert result["accuracy_drop"] == pytest.approx(-0.01)
    assert result["psi"] < 0.05 and result["chi2_p"] > CFG.drift_p_value
    assert set(result["ks"]) == set(drift.FEATURES)
    json.dumps(result)


def test_brightness_half_severity_is_flagged_on_mean(profile):
    x, y = band_images(170, seed=200)
    xd, yd = simulate.apply_drift(x, y, "brightness", 0.5, np.random.default_rng(0), 3)
    result = drift.assess(profile, xd, band_predict(xd), yd, 0.99, CFG)
    assert result["drifted"] and not result["degraded"]
    assert result["ks"]["mean"]["p"] < CFG.drift_p_value and result["ks"]["mean"]["stat"] > 0.5
    assert any(r.startswith("input drift in mean") for r in result["reasons"]), result["reasons"]


@pytest.mark.parametrize(("kind", "feature"), [("contrast", "std"), ("noise", "sharpness"), ("blur", "sharpness")])
def test_image_drifts_are_flagged_on_the_right_feature(profile, kind, feature):
    x, y = band_images(170, seed=201)
    xd, yd = simulate.apply_drift(x, y, kind, 0.5, np.random.default_rng(0), 3)
    result = drift.assess(profile, xd, band_predict(xd), yd, None, CFG)
    assert result["drifted"]
    assert result["ks"][feature]["stat"] >= drift.KS_MIN_STAT and result["ks"][feature]["p"] < CFG.drift_p_value
    assert any(f"input drift in {feature}" in r for r in result["reasons"])


def test_label_shift_is_flagged_by_psi_not_by_image_features(profile):
    x, y = band_images(170, seed=202)
    xd, yd = simulate.apply_drift(x, y, "label-shift", 0.5, np.random.default_rng(0), 3)
    result = drift.assess(profile, xd, band_predict(xd), yd, None, CFG)
    assert result["psi"] > CFG.psi_threshold and result["drifted"]
    assert result["chi2_p"] < CFG.drift_p_value
    assert not any(r.startswith("input drift") for r in result["reasons"])
    assert any(r.startswith("prediction drift: PSI") for r in result["reasons"])
    assert result["accuracy"] == pytest.approx(1.0) and not result["degraded"]  # labels stay correct


def test_tiny_shift_with_huge_batch_needs_the_effect_size(profile):
    x, y = band_images(3000, seed=203)  # 9000 images: a +2 px brightness shift is "significant" but trivial
    xd, yd = simulate.apply_drift(x, y, "brightness", 2 / 80, np.random.default_rng(0), 3)
    result = drift.assess(profile, xd, band_predict(xd), yd, None, CFG)
    stat, p = result["ks"]["mean"]["stat"], result["ks"]["mean"]["p"]
    assert p < CFG.drift_p_value and stat < drift.KS_MIN_STAT, (stat, p)
    assert not result["drifted"]


def test_degradation_needs_labels_and_uses_the_champion_accuracy(profile):
    x, y = band_images(100, seed=204)
    wrong = ((y.astype(int) + 1) % 3).astype(np.uint8)  # concept drift: the same images now mean another class
    pred = band_predict(x)
    result = drift.assess(profile, x, pred, wrong, 0.95, CFG)
    assert result["degraded"] and not result["drifted"]
    assert result["accuracy"] == pytest.approx(0.0) and result["accuracy_drop"] == pytest.approx(0.95)
    assert any("below the baseline 0.9500" in r for r in result["reasons"])
    unlabelled = drift.assess(profile, x, pred, None, 0.95, CFG)
    assert unlabelled["accuracy"] is None and unlabelled["accuracy_drop"] is None and not unlabelled["degraded"]
    # without a champion accuracy the profile's reference accuracy is the baseline
    fallback = drift.assess(profile, x, pred, y, None, CFG)
    assert fallback["baseline_accuracy"] == pytest.approx(profile["accuracy"])
    # a small drop within max_accuracy_drop is fine
    y_some = y.copy()
    y_some[:2] = (y_some[:2] + 1) % 3  # 2 of 300 wrong: drop 0.0067
    assert not drift.assess(profile, x, pred, y_some, 1.0, CFG)["degraded"]

"""leukoscope.review.rules: the review rules fitted from model outputs (synthetic arrays, no model)."""

from __future__ import annotations

import numpy as np
import pytest

from leukoscope.review.ood import DEFAULT_QUANTILE
from leukoscope.review.quality import MIN_JPEG_QUALITY, SIZE_RATIO_RANGE, QualityThresholds
from leukoscope.review.rules import (
    DEFAULT_CONFIDENCE_THRESHOLD,
    NO_VAL_CONFIDENCE_THRESHOLD,
    ReviewThresholds,
    choose_confidence_threshold,
    fit_review,
)


def test_choose_confidence_threshold() -> None:
    probs = np.array([[0.97, 0.03], [0.8, 0.2], [0.55, 0.45], [0.3, 0.7]])
    assert choose_confidence_threshold(probs, np.array([0, 0, 1, 1]), review_fraction=0) == 0.56
    assert choose_confidence_threshold(probs, np.array([0, 0, 0, 1]), review_fraction=0) == 0.5
    assert choose_confidence_threshold(probs, np.array([1, 1, 1, 0]), review_fraction=0) == 0.99  # never accurate
    # error-free validation: the least confident share of images is still flagged
    confident = np.column_stack([np.linspace(0.6, 1.0, 101), 1 - np.linspace(0.6, 1.0, 101)])
    assert choose_confidence_threshold(confident, np.zeros(101, int), review_fraction=0) == 0.5
    assert choose_confidence_threshold(confident, np.zeros(101, int), review_fraction=0.1) == 0.64


def _outputs(n: int, seed: int = 0):
    """Features in two well separated clusters, labels, 16x16 noise images, and logits that favour the label."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    feats = rng.normal(size=(n, 8)) + labels[:, None] * 6.0
    logits = np.where(np.eye(2)[labels] > 0, 3.0, 0.0) + rng.normal(scale=0.5, size=(n, 2))
    pixels = rng.integers(0, 256, size=(n, 16, 16, 3), dtype=np.uint8)
    return feats, labels, pixels, logits


def test_with_a_val_part_everything_is_fitted_there() -> None:
    feats, labels, pixels, _ = _outputs(60)
    val_feats, val_labels, _, val_logits = _outputs(200, seed=1)
    info, ood, metrics = fit_review(feats, labels, pixels, val_logits, val_feats, val_labels)
    assert info["temperature_source"] == "fitted on the val part" and info["temperature"] > 0
    assert info["review"]["confidence_threshold_source"] == "chosen on the val part"
    assert info["ood"]["threshold_part"] == "val" and info["ood"]["feature_dim"] == 8
    flagged = np.mean(ood.score(val_feats) > ood.threshold)
    assert flagged == pytest.approx(1 - DEFAULT_QUANTILE, abs=0.02)  # about 5% of val images flagged
    assert metrics["images"] == 200 and metrics["ood_flag_rate"] == pytest.approx(flagged)
    assert 0 < metrics["review_rate"] <= 1 and metrics["accuracy"] > 0.9


def test_a_runs_own_temperature_is_kept() -> None:
    feats, labels, pixels, _ = _outputs(60)
    val_feats, val_labels, _, val_logits = _outputs(40, seed=1)
    info, _, _ = fit_review(feats, labels, pixels, val_logits, val_feats, val_labels, run_temperature=1.7)
    assert info["temperature"] == 1.7 and info["temperature_source"] == "calibration.json"


def test_without_a_val_part_the_defaults_and_a_held_out_fifth_are_used() -> None:
    feats, labels, pixels, _ = _outputs(100)
    messages: list[str] = []
    info, ood, metrics = fit_review(feats, labels, pixels, None, None, np.zeros(0, int), log=messages.append)
    assert info["temperature"] == 1.0 and metrics == {}
    assert info["review"]["confidence_threshold"] == NO_VAL_CONFIDENCE_THRESHOLD
    assert info["ood"]["threshold_part"].startswith("every 5th training image")
    assert np.isfinite(ood.threshold) and len(messages) == 1 and "OOD threshold" in messages[0]


def test_review_thresholds_read_back_what_fit_review_writes() -> None:
    feats, labels, pixels, _ = _outputs(60)
    val_feats, val_labels, _, val_logits = _outputs(200, seed=1)
    review = fit_review(feats, labels, pixels, val_logits, val_feats, val_labels)[0]["review"]
    rules = ReviewThresholds.from_dict(review, 224)
    assert rules.confidence == review["confidence_threshold"]
    assert rules.quality.to_dict() == {k: review[k] for k in rules.quality.to_dict()}
    assert (rules.min_jpeg_quality, rules.size_ratio_range, rules.min_side) == (MIN_JPEG_QUALITY, SIZE_RATIO_RANGE, 28)


def test_review_thresholds_default_what_a_package_lacks() -> None:
    rules = ReviewThresholds.from_dict({}, 384)
    assert rules == ReviewThresholds(DEFAULT_CONFIDENCE_THRESHOLD, QualityThresholds(0.0, 2.0), MIN_JPEG_QUALITY,
                                     SIZE_RATIO_RANGE, 48)
    assert ReviewThresholds.from_dict({"min_side": 10, "size_ratio_range": [1, 2]}, 224).size_ratio_range == (1.0, 2.0)
    assert ReviewThresholds.from_dict({}, 8).min_side == 2

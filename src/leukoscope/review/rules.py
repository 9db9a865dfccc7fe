"""When to flag an image for review: temperature, confidence threshold, out-of-distribution and image-quality
thresholds, fitted from a network's outputs on the training and validation parts (`fit_review`, at export),
and read back from a package's model.json (`ReviewThresholds`, when a Predictor loads).

Kept apart from the export so that the rules that decide what a reviewer sees are one small module with
no model, file or backend in it: arrays in, thresholds out, testable on synthetic numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from leukoscope.review.calibration import fit_temperature, softmax
from leukoscope.review.ood import DEFAULT_QUANTILE, OOD_FILE, MahalanobisOOD
from leukoscope.review.quality import (
    MIN_JPEG_QUALITY,
    MIN_SIDE_FRACTION,
    SIZE_RATIO_RANGE,
    QualityThresholds,
    fit_quality_thresholds,
    image_stats,
)

TARGET_CONFIDENT_ACCURACY = 0.995
REVIEW_FRACTION = 0.02  # at least this share of in-distribution val images is flagged by confidence
NO_VAL_CONFIDENCE_THRESHOLD = 0.9
DEFAULT_CONFIDENCE_THRESHOLD = 0.9  # a package or run without a fitted threshold


@dataclass(frozen=True)
class ReviewThresholds:
    """model.json's `review` section as a Predictor applies it. Keys a package lacks (older packages, run
    folders) take the defaults; the confidence threshold, the OOD threshold (in ood.npz) and the quality
    thresholds are fitted by `fit_review`."""

    confidence: float
    quality: QualityThresholds
    min_jpeg_quality: float
    size_ratio_range: tuple[float, float]
    min_side: int  # shorter side below this: too_small (unusable)

    @classmethod
    def from_dict(cls, review: Mapping[str, Any], training_size: int) -> ReviewThresholds:
        """From model.json's `review` (possibly empty) for a model trained on `training_size` px images."""
        low, high = review.get("size_ratio_range", SIZE_RATIO_RANGE)
        return cls(confidence=float(review.get("confidence_threshold", DEFAULT_CONFIDENCE_THRESHOLD)),
                   quality=QualityThresholds.from_dict(review),
                   min_jpeg_quality=float(review.get("min_jpeg_quality", MIN_JPEG_QUALITY)),
                   size_ratio_range=(float(low), float(high)),
                   min_side=int(review.get("min_side", max(2, round(training_size * MIN_SIDE_FRACTION)))))


def choose_confidence_threshold(probs: np.ndarray, labels: np.ndarray, *,
                                target: float = TARGET_CONFIDENT_ACCURACY, low: float = 0.5,
                                high: float = 0.99, review_fraction: float = REVIEW_FRACTION) -> float:
    """The smallest threshold in [low, high] (steps of 0.01) at which the images at or above it reach
    `target` accuracy; `high` when none does. It is never below the `review_fraction` quantile of the
    confidences: a validation part with no (or very few) errors says little about where errors will
    fall, so the least confident couple of percent of ordinary images still get a human look.

    >>> p = np.array([[0.95, 0.05], [0.6, 0.4], [0.3, 0.7]])
    >>> choose_confidence_threshold(p, np.array([0, 1, 1]))
    0.61
    """
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    floor = low
    if review_fraction > 0 and len(confidence):
        floor = min(high, math.ceil(round(float(np.quantile(confidence, review_fraction)) * 100, 6)) / 100)
    for t in np.round(np.arange(low, high + 1e-9, 0.01), 2):
        kept = confidence >= t
        if not kept.any():
            break
        if correct[kept].mean() >= target:
            return float(max(t, floor))
    return float(high)


def fit_review(train_feats: np.ndarray, train_labels: np.ndarray, train_pixels: np.ndarray,
               val_logits: np.ndarray | None, val_feats: np.ndarray | None, val_labels: np.ndarray, *,
               run_temperature: float | None = None, log: Callable[[str], None] | None = None,
               ) -> tuple[dict[str, Any], MahalanobisOOD, dict[str, Any]]:
    """(model.json entries, fitted OOD detector, val-part metrics) from the default engine's outputs.

    With a val part: temperature fitted there (unless the run already has one), confidence threshold chosen
    there, OOD threshold at its DEFAULT_QUANTILE. Without one: temperature 1 and a fixed confidence threshold,
    and the OOD threshold from a fifth of the training images held out of the OOD fit.
    """
    temperature, t_source = run_temperature, "calibration.json"
    metrics: dict[str, Any] = {}
    if val_logits is not None and val_feats is not None and len(val_logits):
        if temperature is None:
            temperature = float(fit_temperature(np.asarray(val_logits, np.float64), np.asarray(val_labels)))
            t_source = "fitted on the val part"
        probs = softmax(val_logits, temperature)
        threshold, c_source = choose_confidence_threshold(probs, val_labels), "chosen on the val part"
        ood = MahalanobisOOD.fit(train_feats, train_labels)
        val_scores = ood.score(val_feats)
        ood.set_threshold(val_scores)
        ood_part = "val"
        metrics = _val_metrics(probs, val_labels, val_scores, ood.threshold, threshold)
    else:
        if temperature is None:
            temperature, t_source = 1.0, "none (no val part and no calibration.json)"
        threshold, c_source = NO_VAL_CONFIDENCE_THRESHOLD, "default (no val part)"
        held = np.arange(len(train_labels)) % 5 == 0
        ood = MahalanobisOOD.fit(train_feats[~held], train_labels[~held])
        ood.set_threshold(ood.score(train_feats[held]))
        ood_part = "every 5th training image, held out of the fit"
    quality = fit_quality_thresholds(np.array([image_stats(p) for p in train_pixels]))
    if log is not None:
        log(f"temperature {temperature:.3f} ({t_source}); review below confidence {threshold:.2f} ({c_source}); "
            f"OOD threshold {ood.threshold:.1f}")
    review = {"confidence_threshold": threshold, "confidence_threshold_source": c_source,
              "target_confident_accuracy": TARGET_CONFIDENT_ACCURACY, "ood_threshold": ood.threshold,
              **quality.to_dict(), "size_ratio_range": list(SIZE_RATIO_RANGE),
              "min_jpeg_quality": MIN_JPEG_QUALITY}
    info = {"temperature": temperature, "temperature_source": t_source, "review": review,
            "ood": {"method": "mahalanobis", "file": OOD_FILE, "feature_dim": int(train_feats.shape[1]),
                    "components": len(ood.variances), "fitted_on": "train", "threshold_part": ood_part,
                    "quantile": DEFAULT_QUANTILE}}
    return info, ood, metrics


def _val_metrics(probs: np.ndarray, labels: np.ndarray, scores: np.ndarray, ood_threshold: float,
                 threshold: float) -> dict[str, Any]:
    """Accuracy and review rates on the val part (thresholds were chosen there: optimistic)."""
    correct = probs.argmax(1) == labels
    flagged = (probs.max(1) < threshold) | (scores > ood_threshold)
    return {"images": len(labels), "accuracy": float(correct.mean()),
            "review_rate": float(flagged.mean()), "ood_flag_rate": float((scores > ood_threshold).mean()),
            "accuracy_not_flagged": float(correct[~flagged].mean()) if (~flagged).any() else None,
            "note": "val part, also used to choose the thresholds; see the evaluation for test-part metrics"}

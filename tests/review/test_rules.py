"""leukoscope.review.rules: the review rules fitted from model outputs (synthetic arrays, no model)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from leukoscope.review import reasons
from leukoscope.review.ood import DEFAULT_QUANTILE
from leukoscope.review.quality import MIN_JPEG_QUALITY, SIZE_RATIO_RANGE, QualityThresholds, quality_reasons
from leukoscope.review.rules import (
    DEFAULT_CONFIDENCE_THRESHOLD,
    NO_VAL_CONFIDENCE_THRESHOLD,
    SHIFT_RULE,
    ReviewImages,
    ReviewThresholds,
    cell_scale,
    choose_benign_threshold,
    choose_confidence_threshold,
    fit_review,
    fit_scale_range,
    fit_shift_rules,
    pixel_measures,
    quality_flags,
    scale_reasons,
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
                                     SIZE_RATIO_RANGE, 48, benign_confidence=DEFAULT_CONFIDENCE_THRESHOLD)
    assert rules.benign_class == "Benign" and rules.cell_scale_range is None
    assert ReviewThresholds.from_dict({"min_side": 10, "size_ratio_range": [1, 2]}, 224).size_ratio_range == (1.0, 2.0)
    assert ReviewThresholds.from_dict({}, 8).min_side == 2


# ------------------------------------------------------------------------------------------- shift rules


def test_older_review_sections_keep_a_symmetric_rule_and_new_ones_read_back() -> None:
    old = ReviewThresholds.from_dict({"confidence_threshold": 0.97}, 224)
    assert old.benign_confidence == old.confidence == 0.97 and old.cell_scale_range is None
    new = ReviewThresholds.from_dict({"confidence_threshold": 0.97, "benign_confidence_threshold": 0.9995,
                                      "benign_class": "Normal", "cell_scale_range": [4.5, 20]}, 224)
    assert (new.confidence, new.benign_confidence, new.benign_class) == (0.97, 0.9995, "Normal")
    assert new.cell_scale_range == (4.5, 20.0)


def _benign_calls(p_benign: list[float]) -> np.ndarray:
    p = np.asarray(p_benign)
    return np.column_stack([p, 1 - p])


def test_benign_threshold_catches_every_missed_leukemia_with_a_margin() -> None:
    # leukemia (label 1) called Benign at 0.9990 and 0.9996; benign images called Benign at 0.99999
    probs = _benign_calls([0.9990, 0.9996, 0.99999, 0.99999])
    labels, shifted = np.array([1, 1, 0, 0]), np.array([True, True, False, False])
    t, report = choose_benign_threshold(probs, labels, np.zeros(4, bool), shifted, benign=0,
                                        confidence_threshold=0.99)
    assert t == 0.9998  # residual 0.0004 halved
    assert report["missed_before"] == 2 and report["missed_after"] == 0 and not report["capped"]
    assert report["flagged_unshifted_after"] == 0.0
    # one of them already flagged by another reason: only the other one sets the threshold
    t, _ = choose_benign_threshold(probs, labels, np.array([False, True, False, False]), shifted, benign=0,
                                   confidence_threshold=0.99)
    assert t == 0.9995
    # nothing missed: the symmetric threshold
    t, report = choose_benign_threshold(probs, np.array([0, 0, 0, 0]), np.zeros(4, bool), shifted, benign=0,
                                        confidence_threshold=0.99)
    assert t == 0.99 and report["missed_before"] == 0


def test_benign_threshold_is_capped_by_the_flags_it_costs_on_unshifted_images() -> None:
    unshifted = list(np.linspace(0.9991, 0.99999, 20))  # correct Benign calls
    probs = _benign_calls([0.99999, *unshifted])
    labels = np.array([1] + [0] * 20)
    shifted = np.array([True] + [False] * 20)
    t, report = choose_benign_threshold(probs, labels, np.zeros(21, bool), shifted, benign=0,
                                        confidence_threshold=0.99, max_flag_rise=0.10)
    assert report["capped"] and report["missed_after"] == 1 and report["wanted"] > t
    assert report["flagged_unshifted_after"] <= 0.10 + 1e-9
    assert report["flagged_unshifted_after"] > 0  # the cap is used, not abandoned
    # the cap counts from the flags before the new rules: flags another new rule adds use it up first
    other = np.zeros(21, bool)
    other[1:3] = True
    _, report2 = choose_benign_threshold(probs, labels, other, shifted, benign=0, confidence_threshold=0.99,
                                         max_flag_rise=0.10, baseline=0.0)
    assert report2["flagged_unshifted_after"] <= 0.10 + 1e-9 and report2["flag_limit_unshifted"] == pytest.approx(0.10)


def _discs(radius: float, size: int = 224, seed: int = 0) -> np.ndarray:
    """Many pale red-cell-like discs of one radius on a light background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    image = np.full((size, size, 3), 235.0)
    for cx, cy in rng.uniform(0, size, (int(size * size / (radius * radius * 12)), 2)):
        image[(xx - cx) ** 2 + (yy - cy) ** 2 < radius * radius] = (190, 150, 190)
    return np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)


def test_cell_scale_follows_the_magnification() -> None:
    small, large = cell_scale(_discs(6)), cell_scale(_discs(12))
    assert 1.5 < large / small < 3.0
    zoomed = np.asarray(Image.fromarray(_discs(6)).resize((448, 448), Image.Resampling.BICUBIC))[112:336, 112:336]
    assert 1.5 < cell_scale(zoomed) / small < 3.0
    assert cell_scale(_discs(3, size=48)) > 0  # small images are measured without the 2x reduction


def _plain_cell_scale(rgb: np.ndarray) -> float:
    """cell_scale by its definition, in float64 with numpy's 2-D FFT: LoG energy per sigma from the power
    spectrum of the windowed grey image (Pillow's luma, reduced 2x by block means)."""
    from leukoscope.review.rules import SCALE_SIGMAS, _scale_tables

    step = 2 if min(rgb.shape[:2]) >= 64 else 1
    grey = np.asarray(Image.fromarray(rgb).convert("L").reduce(step), np.float64)
    _, weights, window = _scale_tables(*grey.shape, step)
    full = np.abs(np.fft.fft2((grey - grey.mean()) * window)) ** 2  # the whole plane, no half-plane doubling
    radius = np.hypot(*np.meshgrid(np.fft.fftfreq(grey.shape[0]), np.fft.fftfreq(grey.shape[1]), indexing="ij"))
    n = max(grey.shape)
    per_bin = np.bincount(np.minimum((radius * 2 * n).astype(int), n).ravel(), weights=full.ravel(), minlength=n + 1)
    return float(SCALE_SIGMAS[int(np.argmax(weights @ per_bin))])


@pytest.mark.parametrize(("radius", "size"), [(3, 224), (6, 224), (12, 224), (6, 201), (3, 48), (8, 130)])
def test_cell_scale_is_its_plain_definition(radius: float, size: int) -> None:
    """The fast path (float32 half-plane FFT, in place) finds the same sigma as the plain full-plane one."""
    rgb = _discs(radius, size=size, seed=radius)
    assert cell_scale(rgb) == _plain_cell_scale(rgb)
    assert cell_scale(Image.fromarray(rgb)) == cell_scale(rgb)  # the PIL image the pixels came from


def test_scale_range_and_reasons() -> None:
    low, high = fit_scale_range(np.linspace(4, 12, 201))
    assert low == pytest.approx(4.04) and high == pytest.approx(11.96)
    assert scale_reasons(_discs(6), None) == []
    assert scale_reasons(_discs(6), (0.5, 40)) == []
    (reason,) = scale_reasons(_discs(12), (1.0, 4.0))
    assert reason.code == "cell_scale" and "larger" in reason.message and reason.details["high"] == 4.0
    assert "cell_scale" in reasons.REVIEW_CODES and "benign_low_confidence" in reasons.REVIEW_CODES
    worded = reasons.benign_low_confidence(0.9991, 0.9998)
    assert worded.code == "benign_low_confidence" and worded.details == {"confidence": 0.9991, "threshold": 0.9998}


def test_quality_flags_agree_with_quality_reasons() -> None:
    rng = np.random.default_rng(0)
    images = [_discs(6), np.full((64, 64, 3), 128, np.uint8), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
              np.asarray(Image.fromarray(_discs(6)).resize((56, 56)).resize((224, 224), Image.Resampling.BILINEAR))]
    thresholds = QualityThresholds(sharpness=50.0, contrast=4.0)
    flags = [quality_flags(pixel_measures(image[None]), thresholds)[0] for image in images]
    assert flags == [bool(quality_reasons(image, thresholds)) for image in images]
    assert flags[1] and flags[2]
    assert pixel_measures(np.stack([_discs(6)] * 3)).shape == (3, 5)


def _review_images(seed: int = 0) -> ReviewImages:
    """Two copies of a val set: as is (all called right), and shifted (two leukemia images called Benign)."""
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(2), 20)
    logits = np.where(np.eye(2)[labels] > 0, 12.0, 0.0) + rng.normal(scale=0.2, size=(40, 2))
    shifted_logits = logits.copy()
    shifted_logits[[1, 3]] = [[4.0, 0.0], [5.0, 0.0]]  # P(Benign) 0.982 and 0.993: above the 0.9 threshold
    measures = np.tile(pixel_measures(_discs(6)[None]), (80, 1))
    feats = rng.normal(size=(80, 4))
    return ReviewImages(np.concatenate([logits, shifted_logits]), feats, np.concatenate([labels, labels]), measures,
                        np.repeat([False, True], 40), ["none"] * 40 + ["hue"] * 40)


def test_fit_shift_rules_writes_the_rule_and_flags_the_shifted_misses() -> None:
    images = _review_images()
    entries, report = fit_shift_rules(images, np.linspace(4, 12, 100), ["Benign", "Blast"], temperature=1.0,
                                      confidence_threshold=0.9, ood=None, quality=QualityThresholds(1.0, 2.0))
    assert entries["benign_class"] == "Benign" and entries["shift_rule"] == SHIFT_RULE
    assert 0.9 < entries["benign_confidence_threshold"] < 1.0
    assert entries["cell_scale_range"][0] < cell_scale(_discs(6)) < entries["cell_scale_range"][1]
    assert report["missed_before"] == 2 and report["missed_after"] == 0
    assert report["images"] == 80 and report["shifted_images"] == 40
    rules = ReviewThresholds.from_dict({"confidence_threshold": 0.9, **entries}, 224)
    assert rules.benign_confidence == entries["benign_confidence_threshold"]


def test_fit_review_adds_the_shift_rules_only_when_given_shifted_images() -> None:
    feats, labels, _, _ = _outputs(60)
    pixels = np.stack([_discs(6, size=64, seed=i) for i in range(60)])
    val_feats, val_labels, _, val_logits = _outputs(40, seed=1)
    plain, _, metrics = fit_review(feats, labels, pixels, val_logits, val_feats, val_labels)
    assert "benign_confidence_threshold" not in plain["review"] and "shift_rules" not in metrics
    images = _review_images()
    images.feats = np.random.default_rng(2).normal(size=(80, 8)) + images.labels[:, None] * 6.0
    info, _, metrics = fit_review(feats, labels, pixels, val_logits, val_feats, val_labels, shifted=images,
                                  classes=["Benign", "Blast"])
    assert info["review"]["benign_confidence_threshold"] >= info["review"]["confidence_threshold"]
    assert len(info["review"]["cell_scale_range"]) == 2 and metrics["shift_rules"]["images"] == 80
    without_benign, _, _ = fit_review(feats, labels, pixels, val_logits, val_feats, val_labels, shifted=images,
                                      classes=["A", "B"])
    assert "benign_confidence_threshold" not in without_benign["review"]

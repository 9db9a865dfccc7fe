"""`leukoscope.review_metrics`: the review-flag counts a lab reads before trusting the tool."""

from __future__ import annotations

import pytest

from leukoscope.review_metrics import reason_kind, review_summary

CLASSES = ("Benign", "Early Pre-B", "Pre-B", "Pro-B")


def test_counts_split_wrong_calls_by_flag_and_by_clinical_error() -> None:
    y = [0, 0, 0, 1, 2, 3, 1]
    pred = [0, 2, 1, 0, 2, 3, 0]
    flagged = [False, False, True, False, True, False, True]
    reasons = [[], [], ["low confidence (0.61 < 0.90)"], [],
               ["image looks unlike the training images (out-of-distribution score 80.1 > 40.2)"], [],
               ["low confidence (0.55 < 0.90)"]]
    summary = review_summary(y, pred, flagged, reasons, classes=CLASSES)
    assert summary["n"] == 7 and summary["flagged"] == 3
    assert summary["flagged_fraction"] == pytest.approx(3 / 7)
    assert summary["wrong"] == 4 and summary["wrong_flagged"] == 2 and summary["wrong_not_flagged"] == 2
    assert summary["unflagged_accuracy"] == pytest.approx(2 / 4)
    assert summary["n_benign"] == 3 and summary["n_leukemia"] == 4
    assert summary["benign_called_leukemia_not_flagged"] == 1  # image 1; image 2 was flagged
    assert summary["leukemia_called_benign_not_flagged"] == 1  # image 3; image 6 was flagged
    assert summary["reasons"] == {"low confidence": 2, "image looks unlike the training images": 1}


def test_without_a_benign_class_the_leukemia_counts_are_none() -> None:
    summary = review_summary([0, 1], [1, 1], [False, False], [[], []], classes=("cat", "dog"))
    assert summary["wrong_not_flagged"] == 1
    assert summary["benign_called_leukemia_not_flagged"] is None and summary["n_benign"] is None


def test_everything_flagged_has_no_unflagged_accuracy() -> None:
    summary = review_summary([0], [0], [True], [["blurry"]], classes=CLASSES)
    assert summary["unflagged_accuracy"] is None and summary["reasons"] == {"blurry": 1}


def test_lengths_must_match() -> None:
    with pytest.raises(ValueError, match="one entry per image"):
        review_summary([0, 1], [0], [False, False], [[], []], classes=CLASSES)


def test_reason_kind_drops_the_numbers() -> None:
    assert reason_kind("low confidence (0.61 < 0.90)") == "low confidence"
    assert reason_kind("image (64x64) is much smaller than the training images (224x224): cells may be too small"
                       ) == "image is much smaller than the training images"
    assert reason_kind("image is nearly uniform (contrast 0.4 < 8.0): no cells visible") == "image is nearly uniform"
    assert reason_kind("no numbers here") == "no numbers here"

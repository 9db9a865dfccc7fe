"""`leukoscope.review.metrics`: the review-flag counts a lab reads before trusting the tool."""

from __future__ import annotations

import pytest

from leukoscope.review.metrics import review_summary

CLASSES = ("Benign", "Early Pre-B", "Pre-B", "Pro-B")


def test_counts_split_wrong_calls_by_flag_and_by_clinical_error() -> None:
    y = [0, 0, 0, 1, 2, 3, 1]
    pred = [0, 2, 1, 0, 2, 3, 0]
    flagged = [False, False, True, False, True, False, True]
    codes = [[], [], ["low_confidence"], [], ["out_of_distribution"], [], ["low_confidence"]]
    summary = review_summary(y, pred, flagged, codes, classes=CLASSES)
    assert summary["n"] == 7 and summary["flagged"] == 3
    assert summary["flagged_fraction"] == pytest.approx(3 / 7)
    assert summary["wrong"] == 4 and summary["wrong_flagged"] == 2 and summary["wrong_not_flagged"] == 2
    assert summary["unflagged_accuracy"] == pytest.approx(2 / 4)
    assert summary["n_benign"] == 3 and summary["n_leukemia"] == 4
    assert summary["benign_called_leukemia_not_flagged"] == 1  # image 1; image 2 was flagged
    assert summary["leukemia_called_benign_not_flagged"] == 1  # image 3; image 6 was flagged
    assert summary["reasons"] == {"low_confidence": 2, "out_of_distribution": 1}


def test_without_a_benign_class_the_leukemia_counts_are_none() -> None:
    summary = review_summary([0, 1], [1, 1], [False, False], [[], []], classes=("cat", "dog"))
    assert summary["wrong_not_flagged"] == 1
    assert summary["benign_called_leukemia_not_flagged"] is None and summary["n_benign"] is None


def test_everything_flagged_has_no_unflagged_accuracy() -> None:
    summary = review_summary([0], [0], [True], [["blurry", "small_image"]], classes=CLASSES)
    assert summary["unflagged_accuracy"] is None and summary["reasons"] == {"blurry": 1, "small_image": 1}


def test_lengths_must_match() -> None:
    with pytest.raises(ValueError, match="one entry per image"):
        review_summary([0, 1], [0], [False, False], [[], []], classes=CLASSES)


def test_reasons_are_counted_by_code_whatever_the_wording() -> None:
    """Counting parsed English merged or split kinds whenever a message changed; codes are stable."""
    from leukoscope.review import reasons

    worded = [reasons.small_image(20, 20, 224), reasons.small_image(100, 90, 224), reasons.low_confidence(0.5, 0.9)]
    summary = review_summary([0, 0, 0], [0, 0, 0], [True] * 3, [[r.code] for r in worded], classes=CLASSES)
    assert summary["reasons"] == {"small_image": 2, "low_confidence": 1}
    assert all(r.code in reasons.CODES and r.details for r in worded)

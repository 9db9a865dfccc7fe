"""The Benign view check: its model.json section and which view, if any, doubts a Benign call
(leukoscope.review.benign_check)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from leukoscope.review import reasons as why
from leukoscope.review.benign_check import BenignCheck
from leukoscope.review.realign import MAX_VIEWS, View
from leukoscope.review.rules import ReviewThresholds


def test_the_section_round_trips_and_reaches_the_review_thresholds() -> None:
    check = BenignCheck.from_dict({"views": [{"scale": 2}, {"scale": 0.5}], "threshold": 0.999})
    assert check.views == (View(scale=2.0), View(scale=0.5)) and check.threshold == 0.999
    assert BenignCheck.from_dict(check.to_dict()) == check
    rules = ReviewThresholds.from_dict({"benign_check": check.to_dict()}, 224)
    assert rules.benign_check == check
    assert ReviewThresholds.from_dict({}, 224).benign_check is None  # older packages: no check


@pytest.mark.parametrize("bad", [{"views": [], "threshold": 0.9}, {"views": [{"scale": 2}]},
                                 {"views": [{"scale": 2}], "threshold": 0}, {"views": [{"scale": 2}], "threshold": 1.5},
                                 {"views": [{"scale": 2}], "threshold": math.nan},
                                 {"views": [{"scale": 2}], "threshold": "0.9"}, {"views": [{"scale": 2}], "threshold": True},
                                 {"views": "x2", "threshold": 0.9}, {"views": [{"zoom": 2}], "threshold": 0.9},
                                 {"views": [{"scale": 1}], "threshold": 0.9}, {"views": [{"scale": "big"}], "threshold": 0.9},
                                 {"views": [{"scale": 2}] * (MAX_VIEWS + 1), "threshold": 0.9}, [0.9], "x2"])
def test_a_bad_section_is_a_value_error(bad) -> None:
    with pytest.raises(ValueError):
        BenignCheck.from_dict(bad)


def test_the_view_with_the_lowest_benign_probability_doubts_the_call_below_the_threshold() -> None:
    check = BenignCheck((View(scale=0.5), View(scale=2.0)), threshold=0.99)
    p_benign = np.array([[0.999, 0.995],   # both views hold: the call stands
                         [0.999, 0.30],    # x2 doubts it
                         [0.98, 0.995],    # x0.5 doubts it
                         [0.5, 0.2],       # both do: the lower one is named
                         [0.99, 0.99]])    # exactly at the threshold holds
    assert check.doubting_view(p_benign).tolist() == [-1, 1, 0, 1, -1]
    assert check.doubting_view(np.zeros((0, 2))).tolist() == []


def test_the_views_are_applied_image_major() -> None:
    check = BenignCheck((View(scale=0.5), View(scale=2.0)), threshold=0.99)
    images = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    batch = check.view_batch(images)
    assert batch.shape == (6, 32, 32, 3)
    assert np.array_equal(batch[3], View(scale=2.0).apply(images[1]))


def test_the_reason_says_what_the_view_read_and_is_a_review_code() -> None:
    reason = why.benign_view("resized x2", 0.41234567, 0.999, "Pre-B")
    assert reason.code == "benign_view" and reason.code in why.REVIEW_CODES and not reason.unusable
    assert "resized x2 reads Pre-B" in reason.message and "0.4123" in reason.message
    assert reason.details == {"view": "resized x2", "p_benign_at_view": 0.412346, "threshold": 0.999,
                              "label_at_view": "Pre-B"}

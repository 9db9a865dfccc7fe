"""leukoscope.review.samples: the sample call leads with leukemia vs benign and never headlines Benign when a
usable image looks leukemic; unusable, unreadable and repeated images do not count."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from leukoscope.data.classes import CANONICAL_CLASSES as CLASSES
from leukoscope.inference.predictor import Prediction
from leukoscope.review.samples import group_by_folder, sample_call


def _pred(source: str, label: str | None, probs: list[float] | None = None, review: bool = False,
          sha: str | None = None, status: str = "") -> Prediction:
    probs = probs or [1.0 if c == label else 0.0 for c in CLASSES]
    return Prediction(source, sha if sha is not None else source, label, dict(zip(CLASSES, probs, strict=True)),
                      max(probs), review, ["x"] if review else [], None, 64, 64,
                      "unreadable" if status == "error" else None, status)


def test_one_image_per_class_is_leukemia_not_benign() -> None:
    """Issue #11: one image per class once gave "sample call: Benign (25.1%)" from the mean probabilities."""
    call = sample_call([_pred("a", "Benign", [0.97, 0.01, 0.01, 0.01]), _pred("b", "Early Pre-B", [0.02, 0.9, 0.04, 0.04]),
                        _pred("c", "Pre-B", [0.02, 0.03, 0.92, 0.03]), _pred("d", "Pro-B", [0.02, 0.03, 0.05, 0.9])],
                       CLASSES)
    assert call.call == "leukemia" and call.label == "Pre-B"  # a 1-1-1 tie goes to the higher probability
    assert call.headline.startswith("leukemia suspected: Pre-B")
    assert call.summary.startswith("leukemic-looking cells in 3 of 4 usable images")
    assert "mixed_subtypes" in call.review_codes and call.leukemic_images == 3


def test_three_benign_and_one_pro_b_is_leukemia_suspected_pro_b() -> None:
    """Issue #11: 3 Benign + 1 Pro-B once gave "Benign 75%"."""
    call = sample_call([_pred(f"b{i}", "Benign") for i in range(3)] + [_pred("p", "Pro-B")], CLASSES)
    assert (call.call, call.label, call.review) == ("leukemia", "Pro-B", False)
    assert call.headline == "leukemia suspected: Pro-B"
    assert call.summary == "leukemic-looking cells in 1 of 4 usable images (Pro-B in 1)"
    assert call.counts == {"Benign": 3, "Early Pre-B": 0, "Pre-B": 0, "Pro-B": 1}
    assert call.confidence == pytest.approx(1.0)


def test_benign_only_when_every_usable_image_is_benign() -> None:
    clean = sample_call([_pred(f"b{i}", "Benign") for i in range(4)], CLASSES)
    assert (clean.call, clean.label, clean.headline, clean.review) == ("benign", "Benign", "Benign", False)
    assert clean.summary == "all 4 usable images look benign"
    flagged = sample_call([_pred("b0", "Benign"), _pred("b1", "Benign", [0.6, 0.3, 0.05, 0.05], review=True)],
                          CLASSES)
    assert flagged.call == "benign" and flagged.review and flagged.headline == "Benign (to review)"
    assert "benign_flagged" in flagged.review_codes and "many_flagged" in flagged.review_codes


def test_a_leukemia_call_on_flagged_images_only_is_to_review() -> None:
    call = sample_call([_pred("b", "Benign"), _pred("p", "Pre-B", [0.3, 0.1, 0.5, 0.1], review=True)], CLASSES)
    assert call.call == "leukemia" and call.review and call.headline == "leukemia suspected: Pre-B (to review)"
    assert call.review_codes[0] == "leukemia_flagged"
    assert all(":" in reason for reason in call.review_reasons)  # each says what to do next


def test_unusable_and_unreadable_images_never_count() -> None:
    """Issue #11: a white PNG and a 1x1 PNG beside one Early Pre-B image once made the sample "Pro-B"."""
    call = sample_call([_pred("e", "Early Pre-B"), _pred("white", None, [0.0] * 4, review=True),
                        _pred("dot", None, [0.0] * 4, review=True), _pred("bad", None, [0.0] * 4, status="error")],
                       CLASSES, failed=1)
    assert (call.call, call.label) == ("leukemia", "Early Pre-B")
    assert (call.images, call.usable, call.unusable, call.failed) == (5, 1, 2, 2)
    assert sum(call.counts.values()) == 1 and call.mean_probabilities["Early Pre-B"] == 1.0
    assert {"unusable_images", "failed_images"} <= set(call.review_codes)
    assert "2 unusable" in call.summary and "2 unreadable" in call.summary


def test_no_usable_image_makes_no_call() -> None:
    call = sample_call([_pred("white", None, [0.0] * 4)], CLASSES)
    assert call.call is None and call.label is None and call.headline == "no call (to review)"
    assert "no_usable_images" in call.review_codes and call.to_json()["label"] is None


def test_the_same_image_twice_counts_once_and_says_so() -> None:
    call = sample_call([_pred("a.png", "Pro-B", sha="s1"), _pred("copy.png", "Pro-B", sha="s1"),
                        _pred("b.png", "Benign", sha="s2")], CLASSES)
    assert call.images == 3 and call.usable == 2 and call.duplicates == 1
    assert call.counts["Pro-B"] == 1 and "1 duplicate image counted once" in call.summary


@dataclass(frozen=True)
class Stored:
    """Any record with the SampleImage fields (the web app passes its stored rows)."""

    label: str | None
    sha256: str
    status: str = "ok"
    review: bool = False
    probabilities: dict[str, float] = field(default_factory=dict)


def test_any_record_with_the_sample_fields_will_do() -> None:
    call = sample_call([Stored("Benign", "1", probabilities={"Benign": 0.99}),
                        Stored(None, "2", status="unusable")], CLASSES)
    assert call.call == "benign" and call.unusable == 1 and call.mean_probabilities["Benign"] == 0.99


def test_group_by_folder_rows() -> None:
    rows = group_by_folder([
        _pred("p1/a.png", "Benign", [0.9, 0.1, 0, 0]), _pred("p1/b.png", "Benign", [0.98, 0.02, 0, 0]),
        _pred("p2/a.png", "Pre-B", [0, 0.4, 0.6, 0], review=True), _pred("p2/b.png", "Benign", [0.95, 0.05, 0, 0]),
        _pred("p2/c.png", None, [0, 0, 0, 0], status="error"),
    ], CLASSES)
    p1, p2 = rows
    assert p1["folder"] == "p1" and p1["call"] == "benign" and p1["label"] == "Benign"
    assert p1["confidence"] == pytest.approx(0.94) and p1["n_Benign"] == 2 and not p1["review"]
    assert p2["images"] == 3 and p2["failed"] == 1 and p2["call"] == "leukemia" and p2["label"] == "Pre-B"
    assert p2["review_codes"] == "leukemia_flagged; many_flagged; failed_images"
    assert "could not be read" in p2["review_reasons"] and p2["p_Benign"] == pytest.approx(0.475)
    nested = group_by_folder([_pred("p/a.png", "Pro-B")], CLASSES, nested=True)[0]
    assert nested["review_codes"] == [] and nested["n_Pro-B"] == 1

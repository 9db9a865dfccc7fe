"""leukoscope.samples: one sample-level call per folder from per-image predictions."""

from __future__ import annotations

from leukoscope.classes import CANONICAL_CLASSES as CLASSES
from leukoscope.inference import Prediction
from leukoscope.samples import group_by_folder


def _pred(source: str, label: str | None, probs: list[float], review: bool = False) -> Prediction:
    return Prediction(source, "", label, dict(zip(CLASSES, probs, strict=True)), max(probs), review,
                      ["x"] if review else [], None, 64, 64, None if label else "unreadable")


def test_group_by_folder() -> None:
    rows = group_by_folder([
        _pred("p1/a.png", "Benign", [0.9, 0.1, 0, 0]), _pred("p1/b.png", "Benign", [0.98, 0.02, 0, 0]),
        _pred("p2/a.png", "Pre-B", [0, 0.4, 0.6, 0], review=True), _pred("p2/b.png", "Early Pre-B", [0, 0.7, 0.3, 0]),
        _pred("p2/c.png", None, [0, 0, 0, 0]),
    ], CLASSES, confidence_threshold=0.9)
    p1, p2 = rows
    assert p1["folder"] == "p1" and p1["label"] == "Benign" and abs(p1["confidence"] - 0.94) < 1e-9
    assert p1["n_Benign"] == 2 and not p1["review"]
    assert p2["images"] == 3 and p2["failed"] == 1 and p2["label"] == "Early Pre-B"
    assert p2["n_Pre-B"] == 1 and p2["n_Early Pre-B"] == 1 and p2["review"]
    assert "could not be read" in p2["review_reasons"] and "low sample confidence" in p2["review_reasons"]

"""Shifted copies of a val part read through a Predictor, as the fits of review rules see them.

The fits that choose a package's realignment and Benign view check (scripts/fit_realign.py,
leukoscope.inference.benign_check_fit) compare candidates on the val part and seeded shifted copies of it
(leukoscope.inference.export.shifted_copies). They need the same two readings of a copy: what every command
would say of each file (Predictor.predict_bytes, `read_copy`), and the calibrated outputs of the decoded
pixels, or of one view of them (`outputs`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from leukoscope.inference.prediction import Prediction
from leukoscope.inference.predictor import Predictor
from leukoscope.review.realign import View


@dataclass(frozen=True)
class CopyCalls:
    """What the Predictor said on one copy of the val part: the calls (class index, -1 without a class) and
    the review flags, one per file, in order."""

    predictions: list[Prediction]
    called: np.ndarray
    flagged: np.ndarray

    def missed(self, labels: np.ndarray, benign: int) -> np.ndarray:
        """Leukemia images called Benign without a review flag: the error that must never go unflagged."""
        return (labels != benign) & (self.called == benign) & ~self.flagged


def read_copy(predictor: Predictor, files: list[bytes], name: str) -> CopyCalls:
    """Every file of one val copy through Predictor.predict_bytes, as a lab's upload would go."""
    predictions = predictor.predict_bytes([(f"{name}/{i}", data) for i, data in enumerate(files)])
    called = np.array([predictor.classes.index(p.label) if p.label else -1 for p in predictions], np.int64)
    return CopyCalls(predictions, called, np.array([p.review for p in predictions], bool))


def outputs(predictor: Predictor, pixels: np.ndarray, view: View | None = None
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """Calibrated probabilities (N x C) and OOD scores (N; None for a package without OOD statistics) of the
    images, or of their `view`."""
    batch = pixels if view is None else np.stack([view.apply(p) for p in pixels])
    parts = [predictor.scored(batch[i:i + 32]) for i in range(0, len(batch), 32)]
    scores = [s for _, s in parts]
    ood = None if any(s is None for s in scores) else np.concatenate(scores)
    return np.concatenate([p for p, _ in parts]), ood

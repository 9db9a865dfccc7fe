"""Benign view check: a Benign call that no other reason flags is looked at once more at another
magnification, and goes to review when that view is not near-certain it is Benign too.

A missed leukemia (a leukemia image called Benign without a flag) is the costliest error the tool can make.
Under a second lab's optics and stain a few leukemia images pass every other check (OOD, quality, cell
scale, the strict Benign confidence) and are still called Benign with near-certainty; seen at another
magnification the network is less sure of them than of real Benign images, which stay Benign at every
scale. So a Benign call must hold at the package's views as well: when any view's P(Benign) falls below
`threshold`, the image is flagged (`benign_view`) and its call stays as it is. The check only ever adds a
flag, never changes a call, and runs only on the Benign calls nothing else flagged (one more network pass
per view for those images, none for any other).

The views and threshold of a package are chosen by scripts/fit_benign_check.py's written rule on the val
part and shifted copies of it, never on the test part; model.json's `review.benign_check` holds them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from leukoscope.review.realign import MAX_VIEWS, View, view_batch, views_from_dicts


@dataclass(frozen=True)
class BenignCheck:
    """model.json's `review.benign_check`: the views a Benign call must hold at, and the P(Benign) each view
    must reach."""

    views: tuple[View, ...]
    threshold: float

    def __post_init__(self) -> None:
        if not 1 <= len(self.views) <= MAX_VIEWS:
            raise ValueError(f"benign_check needs 1 to {MAX_VIEWS} views, got {len(self.views)}")
        if not (math.isfinite(self.threshold) and 0.0 < self.threshold <= 1.0):
            raise ValueError(f"benign_check threshold must lie in (0, 1], got {self.threshold!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> BenignCheck:
        if not isinstance(values, Mapping) or "threshold" not in values:
            raise ValueError("review.benign_check must be a mapping with a list of views and a threshold")
        threshold = values["threshold"]
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise ValueError(f"benign_check threshold must be a number, got {threshold!r}")
        return cls(views_from_dicts(values.get("views"), "review.benign_check"), float(threshold))

    def to_dict(self) -> dict[str, Any]:
        return {"views": [v.to_dict() for v in self.views], "threshold": self.threshold}

    def view_batch(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """Every view of every image, image-major: row i * len(views) + j is view j of image i."""
        return view_batch(self.views, pixels)

    def doubting_view(self, p_benign: np.ndarray) -> np.ndarray:
        """Per image, the index of its view with the lowest P(Benign) when that is below the threshold, else
        -1 (the call holds). `p_benign` is N x V: P(Benign) of every view of every image."""
        p = np.asarray(p_benign, np.float64).reshape(-1, len(self.views))
        lowest = p.argmin(axis=1)
        return np.where(p[np.arange(len(p)), lowest] < self.threshold, lowest, -1)

"""Realignment: when an image looks unlike the training images, try it at another magnification or stain
hue and take the call from the view that looks most like them.

A second lab's microscope and stain move images along a few known axes (leukoscope.data.shifts). The
network called 63% of the val part right at 2x magnification and 88% at 0.5x, although it knows every
cell in them: only the scale is new. Undoing the shift before the network sees the image recovers most of
it, and the out-of-distribution score says which undoing fits, per image, with no label and no second
model: among the package's views (rescalings by leukoscope.data.shifts.magnify, hue rotations by
rotate_hue), the one whose penultimate features lie closest to the training classes (lowest Mahalanobis
score) wins when it beats the image as given by `margin`.

Only images the OOD check already flags are realigned, so an image it passes is never touched (its call,
and the time it takes, stay as they are; a flagged one costs one more network pass per view), and a
realigned image keeps its flag: the review
reason `realigned` says which view gave the call, so a person still checks it. A leukemia image called
Benign can therefore never lose its flag through realignment.

The views and margin of a package are chosen by scripts/fit_realign.py's written rule on the val part
and shifted copies of it, never on the test part; model.json's `review.realign` holds them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from leukoscope.data.shifts import magnify, rotate_hue

MAX_VIEWS = 16  # each view costs one more network pass for every flagged image
SCALE_LIMITS = (0.25, 4.0)
HUE_LIMIT = 180.0


@dataclass(frozen=True)
class View:
    """One undoing of a lab's shift: `scale` > 1 zooms in (the cells look smaller than in training), < 1
    zooms out (padded with the background colour); `hue` rotates the stain's hue in degrees."""

    scale: float = 1.0
    hue: float = 0.0

    def __post_init__(self) -> None:
        low, high = SCALE_LIMITS
        if not (math.isfinite(self.scale) and low <= self.scale <= high):
            raise ValueError(f"a view's scale must lie in [{low:g}, {high:g}], got {self.scale!r}")
        if not (math.isfinite(self.hue) and -HUE_LIMIT <= self.hue <= HUE_LIMIT):
            raise ValueError(f"a view's hue must lie in [-{HUE_LIMIT:g}, {HUE_LIMIT:g}] degrees, got {self.hue!r}")
        if self.scale == 1.0 and self.hue == 0.0:
            raise ValueError("a view must change the image (scale 1 and hue 0 is the image as given)")

    def describe(self, *, why: bool = True) -> str:
        """In words, for a review reason: "resized x0.5 (cells looked larger than in training)", or without
        `why` (the view was not chosen because the cells looked so) "resized x0.5"."""
        size = "larger" if self.scale < 1 else "smaller"
        because = f" (cells looked {size} than in training)" if why else ""
        parts = [f"resized x{self.scale:g}{because}"] if self.scale != 1.0 else []
        parts += [f"with its stain hue turned {self.hue:+g} degrees"] if self.hue else []
        return " and ".join(parts)

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """The view of an H x W x 3 uint8 image, same size."""
        image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))
        if self.hue:
            image = rotate_hue(image, self.hue)
        if self.scale != 1.0:
            image = magnify(image, self.scale)
        return np.asarray(image, dtype=np.uint8)

    def to_dict(self) -> dict[str, float]:
        """Only what the view changes: {"scale": 0.5} or {"hue": -10.0}."""
        return {**({"scale": self.scale} if self.scale != 1.0 else {}), **({"hue": self.hue} if self.hue else {})}


def view_batch(views: Sequence[View], pixels: Sequence[np.ndarray]) -> np.ndarray:
    """Every view of every image, image-major: row i * len(views) + j is view j of image i."""
    return np.stack([view.apply(p) for p in pixels for view in views])


def views_from_dicts(values: Any, what: str) -> tuple[View, ...]:
    """model.json's list of views ([{"scale": 2.0}, {"hue": -10.0}]) as Views; ValueError naming `what`."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{what} must hold a list of views")
    views = []
    for view in values:
        if not isinstance(view, Mapping) or set(view) - {"scale", "hue"}:
            raise ValueError(f"a {what} view is a mapping of scale and hue, got {view!r}")
        try:
            views.append(View(float(view.get("scale", 1.0)), float(view.get("hue", 0.0))))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{what}: {exc}") from None
    return tuple(views)


@dataclass(frozen=True)
class RealignRule:
    """model.json's `review.realign`: the views to try on a flagged image and the OOD-score margin a view
    must win by."""

    views: tuple[View, ...]
    margin: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= len(self.views) <= MAX_VIEWS:
            raise ValueError(f"realign needs 1 to {MAX_VIEWS} views, got {len(self.views)}")
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise ValueError(f"realign margin must be a finite number >= 0, got {self.margin!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RealignRule:
        if not isinstance(values, Mapping):
            raise ValueError("review.realign must be a mapping with a list of views")
        return cls(views_from_dicts(values.get("views"), "review.realign"), float(values.get("margin", 0.0)))

    def to_dict(self) -> dict[str, Any]:
        return {"views": [v.to_dict() for v in self.views], "margin": self.margin}

    def view_batch(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """Every view of every image, image-major: row i * len(views) + j is view j of image i."""
        return view_batch(self.views, pixels)

    def choose(self, given: np.ndarray, views: np.ndarray) -> np.ndarray:
        """Per image, the index of the view to take the call from, or -1 to keep the image as given.

        `given` (N) are the images' own OOD scores, `views` (N x V) their views' scores: the lowest view
        wins when it is lower than the image's own score by more than the margin."""
        views = np.asarray(views, np.float64).reshape(len(given), len(self.views))
        best = views.argmin(axis=1)
        better = views[np.arange(len(given)), best] < np.asarray(given, np.float64) - self.margin
        return np.where(better, best, -1)

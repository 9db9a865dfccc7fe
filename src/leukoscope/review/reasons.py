"""Why an image gets no call or needs a human look: stable codes, plain words with a next step, and numbers.

A technologist reads the message ("looks out of focus: refocus and take the image again"), a script or a
metric counts the code (`blurry`), and the numbers behind the decision stay in `details` for whoever audits
it. Codes never change meaning once released; messages may be reworded freely.

Codes (docs/INTERFACES.md):
  unusable (the image gets no class): `too_small`, `uniform`, `noise`, `no_cells`
  review (a class, to be checked): `low_confidence`, `out_of_distribution`, `blurry`, `small_image`,
  `large_image`, `not_square`, `jpeg_quality`, `benign_low_confidence`, `cell_scale`, `realigned`,
  `benign_view`
  error (the file could not be read): `unreadable`
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

UNUSABLE_CODES = frozenset({"too_small", "uniform", "noise", "no_cells"})
REVIEW_CODES = frozenset({"low_confidence", "out_of_distribution", "blurry", "small_image", "large_image",
                          "not_square", "jpeg_quality", "benign_low_confidence", "cell_scale",
                          "realigned", "benign_view"})
ERROR_CODES = frozenset({"unreadable"})
CODES = UNUSABLE_CODES | REVIEW_CODES | ERROR_CODES


@dataclass(frozen=True)
class Reason:
    """One reason: `code` for programs, `message` for people, `details` (numbers) for audits."""

    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def unusable(self) -> bool:
        return self.code in UNUSABLE_CODES


def _r(value: float, digits: int = 3) -> float:
    return round(float(value), digits)


def too_small(width: int, height: int, min_side: int) -> Reason:
    return Reason("too_small", f"image is too small to analyse ({width}x{height} pixels): use the original, "
                  "full-size image", {"width": width, "height": height, "min_side": min_side})


def uniform(contrast: float, threshold: float) -> Reason:
    return Reason("uniform", "image is blank or one flat colour, no cells visible: check that the right file "
                  "was chosen", {"contrast": _r(contrast), "threshold": _r(threshold)})


def noise(correlation: float, threshold: float) -> Reason:
    return Reason("noise", "image looks like random noise or fine print, not a photograph of cells: check the "
                  "file and the camera's export settings",
                  {"neighbour_correlation": _r(correlation), "threshold": _r(threshold)})


def no_cells(structure: float, threshold: float) -> Reason:
    return Reason("no_cells", "no cell-like detail found (only smooth shading): check that the image shows "
                  "a stained smear in focus", {"structure": _r(structure), "threshold": _r(threshold)})


def blurry(sharpness: float, threshold: float) -> Reason:
    return Reason("blurry", "image looks blurry: refocus the microscope and take the image again",
                  {"sharpness": _r(sharpness, 1), "threshold": _r(threshold, 1)})


def small_image(width: int, height: int, training_size: int) -> Reason:
    return Reason("small_image", "image is much smaller than the training images, cells may be too small "
                  "to judge: use the original file or a higher magnification",
                  {"width": width, "height": height, "training_size": training_size})


def large_image(width: int, height: int, training_size: int) -> Reason:
    return Reason("large_image", "image is much larger than the training images (another magnification or "
                  "a whole field?): crop to single cells at the training magnification",
                  {"width": width, "height": height, "training_size": training_size})


def not_square(width: int, height: int) -> Reason:
    return Reason("not_square", "image is far from square, resizing distorts the cells: crop a square "
                  "around the cell", {"width": width, "height": height})


def jpeg_quality(quality: float, minimum: float) -> Reason:
    return Reason("jpeg_quality", "heavily compressed JPEG, fine cell detail may be lost: save the image "
                  "again at a higher quality or as PNG", {"quality": _r(quality, 0), "minimum": _r(minimum, 0)})


def out_of_distribution(score: float, threshold: float) -> Reason:
    return Reason("out_of_distribution", "looks unlike the images this model learned from: check stain and "
                  "magnification", {"ood_score": _r(score, 2), "threshold": _r(threshold, 2)})


def low_confidence(confidence: float, threshold: float) -> Reason:
    return Reason("low_confidence", "low confidence, the model is unsure between classes: have a specialist "
                  "look at this image", {"confidence": _r(confidence, 4), "threshold": _r(threshold, 4)})


def benign_low_confidence(confidence: float, threshold: float) -> Reason:
    return Reason("benign_low_confidence", "called benign, but without the near-certainty a benign call needs "
                  "(a missed leukemia is the costliest error): have a specialist check for leukemic cells",
                  {"confidence": _r(confidence, 6), "threshold": _r(threshold, 6)})


def cell_scale(scale: float, low: float, high: float) -> Reason:
    size = "smaller" if scale < low else "larger"
    return Reason("cell_scale", f"cells look {size} than in the training images (another magnification?): "
                  "take the image at the magnification the model was trained on",
                  {"scale": _r(scale, 2), "low": _r(low, 2), "high": _r(high, 2)})


def realigned(view: str, score: float, view_score: float, label_as_given: str, confidence_as_given: float) -> Reason:
    return Reason("realigned", f"the call comes from the image {view}, where it looks most like the training "
                  f"images (as given it read {label_as_given}): check the call, and the microscope and stain settings",
                  {"view": view, "ood_score": _r(score, 2), "view_ood_score": _r(view_score, 2),
                   "label_as_given": label_as_given, "confidence_as_given": _r(confidence_as_given, 4)})


def benign_view(view: str, p_benign: float, threshold: float, label_at_view: str) -> Reason:
    return Reason("benign_view", f"called Benign, but the image {view} reads {label_at_view} (P(Benign) "
                  f"{p_benign:.4f}, a Benign call needs {threshold:g} there too): have a specialist check for "
                  "leukemic cells, and the microscope's magnification",
                  {"view": view, "p_benign_at_view": _r(p_benign, 6), "threshold": _r(threshold, 6),
                   "label_at_view": label_at_view})


def unreadable(message: str) -> Reason:
    return Reason("unreadable", f"image could not be read ({message}): check the file", {"error": message})


def split(reasons: Iterable[Reason]) -> tuple[list[str], list[str], dict[str, dict[str, Any]]]:
    """(messages, codes, details by code): the three Prediction fields made from a list of reasons."""
    reasons = list(reasons)
    return ([r.message for r in reasons], [r.code for r in reasons], {r.code: dict(r.details) for r in reasons})

"""One image's result, shared by the CLI, the web app, evaluation and the benchmarks (docs/INTERFACES.md).

Three outcomes, kept apart because they ask different things of the reader:
- `ok`: the image was analysed and has a class (`review` says whether a human should check it);
- `unusable`: the file was read but shows nothing the model can judge (blank, noise, a gradient, a few
  pixels): no class and no probabilities, so it can never count towards a sample call;
- `error`: the file could not be read at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from leukoscope.review.reasons import Reason, split

STATUSES = ("ok", "unusable", "error")


@dataclass
class Prediction:
    """One image's result; the field set is a contract (docs/INTERFACES.md) shared with the web app."""

    source: str
    sha256: str
    label: str | None
    probabilities: dict[str, float]
    confidence: float
    review: bool
    review_reasons: list[str]  # plain words with a next step, one per reason
    ood_score: float | None
    width: int
    height: int
    error: str | None = None
    status: str = ""  # ok | unusable | error; derived from error / label when not given
    review_codes: list[str] = field(default_factory=list)  # stable codes (leukoscope.review.reasons), same order
    review_details: dict[str, dict[str, Any]] = field(default_factory=dict)  # the numbers, by code

    def __post_init__(self) -> None:
        if not self.status:
            self.status = "error" if self.error is not None else "ok" if self.label is not None else "unusable"
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}; one of {STATUSES}")

    @classmethod
    def without_call(cls, source: str, sha256: str, classes: Iterable[str], reasons: list[Reason], *, width: int = 0,
                     height: int = 0, error: str | None = None) -> Prediction:
        """An `error` (when `error` is given) or `unusable` result: no class, zero probabilities."""
        messages, codes, details = split(reasons)
        return cls(source, sha256, None, dict.fromkeys(classes, 0.0), 0.0, True, messages, None, width, height,
                   error, "error" if error is not None else "unusable", codes, details)

    def to_row(self, *, nested: bool = False) -> dict[str, Any]:
        """A flat dict (one column per class probability) for CSV that pandas reads; `nested` (for JSON)
        gives review_codes as a list and adds review_details, the numbers behind each reason."""
        row: dict[str, Any] = {"path": self.source, "status": self.status, "label": self.label or "",
                               "confidence": round(self.confidence, 6), "review": self.review,
                               "review_codes": list(self.review_codes) if nested else "; ".join(self.review_codes),
                               "review_reasons": "; ".join(self.review_reasons)}
        if nested:
            row["label"] = self.label
            row["review_details"] = json.loads(json.dumps(self.review_details))
        row.update({f"p_{name}": round(p, 6) for name, p in self.probabilities.items()})
        row.update({"ood_score": None if self.ood_score is None else round(self.ood_score, 4),
                    "width": self.width, "height": self.height, "sha256": self.sha256,
                    "error": self.error or ""})
        return row

"""Sample-level calls: the images of one folder (one smear, one patient) aggregated into one answer.

Clinicians decide per patient, not per image; `leukoscope predict --group-by folder` and the web app's
per-upload summary both use these rules.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .inference import DEFAULT_CONFIDENCE_THRESHOLD, Prediction


def group_by_folder(predictions: Iterable[Prediction], classes: Sequence[str], *,
                    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
                    review_fraction: float = 0.25) -> list[dict[str, Any]]:
    """One sample-level call per folder (one smear / one patient): mean calibrated probabilities of its
    readable images, the image count per predicted class, and a review flag when the mean confidence is
    under `confidence_threshold`, when more than `review_fraction` of its images are flagged, or when an
    image could not be read. Clinicians decide per patient, not per image.
    """
    groups: dict[str, list[Prediction]] = defaultdict(list)
    for prediction in predictions:
        groups[str(Path(prediction.source).parent)].append(prediction)
    rows = []
    for folder in sorted(groups):
        items = groups[folder]
        good = [p for p in items if p.error is None]
        mean = np.mean([[p.probabilities[c] for c in classes] for p in good], axis=0) if good else None
        reasons = []
        failed = len(items) - len(good)
        if failed:
            reasons.append(f"{failed} image(s) could not be read")
        flagged = sum(p.review for p in good)
        if good and flagged > review_fraction * len(good):
            reasons.append(f"{flagged} of {len(good)} images flagged for review")
        confidence = float(mean.max()) if mean is not None else 0.0
        if mean is not None and confidence < confidence_threshold:
            reasons.append(f"low sample confidence ({confidence:.2f} < {confidence_threshold:.2f})")
        if not good:
            reasons.append("no readable images")
        row: dict[str, Any] = {"folder": folder, "images": len(items), "failed": failed,
                               "label": classes[int(np.argmax(mean))] if mean is not None else "",
                               "confidence": round(confidence, 6), "review": bool(reasons),
                               "review_reasons": "; ".join(reasons), "flagged_images": flagged}
        row.update({f"p_{c}": round(float(mean[i]), 6) if mean is not None else 0.0
                    for i, c in enumerate(classes)})
        row.update({f"n_{c}": sum(p.label == c for p in good) for c in classes})
        rows.append(row)
    return rows

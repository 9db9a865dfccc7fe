"""How the review flag performs on labelled images: what a lab checks before it trusts the tool.

Accuracy alone does not tell a lab whether a second reader is safe on *its* images (its stain, its
microscope, its camera). What matters is which calls the reader makes without asking for a human: the
share of images it flags, the wrong calls it makes without a flag, and the two clinical errors among
those, leukemia called benign (a missed case) and benign called leukemia (a false alarm). A lab that
evaluates the model on its own normal lymphocytes wants the last count at zero.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np


def review_summary(
    y_true: Sequence[int] | np.ndarray,
    predicted: Sequence[int] | np.ndarray,
    flagged: Sequence[bool] | np.ndarray,
    codes: Sequence[Sequence[str]],
    *,
    classes: Sequence[str],
    benign_class: str = "Benign",
) -> dict[str, Any]:
    """Counts of flagged and unflagged calls, right and wrong, over images with known labels.

    `predicted` and `y_true` are class indices into `classes`; `codes` holds each image's review codes
    (`Prediction.review_codes`, empty for unflagged images), counted as they are: codes are stable, the
    wording of the messages is not. The leukemia counts are None when the classes have no benign class.
    """
    y = np.asarray(y_true, dtype=np.int64)
    pred = np.asarray(predicted, dtype=np.int64)
    flags = np.asarray(flagged, dtype=bool)
    if not (len(y) == len(pred) == len(flags) == len(codes)):
        raise ValueError("y_true, predicted, flagged and codes must have one entry per image")
    n = len(y)
    correct = y == pred
    unflagged = ~flags
    out: dict[str, Any] = {
        "n": n,
        "flagged": int(flags.sum()),
        "flagged_fraction": float(flags.mean()) if n else None,
        "wrong": int((~correct).sum()),
        "wrong_flagged": int((~correct & flags).sum()),
        "wrong_not_flagged": int((~correct & unflagged).sum()),
        "unflagged_accuracy": float(correct[unflagged].mean()) if unflagged.any() else None,
        "reasons": dict(Counter(code for image in codes for code in image).most_common()),
        "leukemia_called_benign_not_flagged": None,
        "benign_called_leukemia_not_flagged": None,
        "n_leukemia": None,
        "n_benign": None,
    }
    if benign_class in classes:
        b = list(classes).index(benign_class)
        truth_benign, called_benign = y == b, pred == b
        out.update(
            n_leukemia=int((~truth_benign).sum()),
            n_benign=int(truth_benign.sum()),
            leukemia_called_benign_not_flagged=int((~truth_benign & called_benign & unflagged).sum()),
            benign_called_leukemia_not_flagged=int((truth_benign & ~called_benign & unflagged).sum()),
        )
    return out

"""How an interval is made, decided in one place, and the exact interval of a proportion.

A plain proportion (k of n images: accuracy, sensitivity, a class's recall, a review-flag rate) gets the
exact Clopper-Pearson interval of a binomial proportion, from scipy. A percentile bootstrap cannot leave a
perfect sample (460 of 460 right gives [1, 1]); the exact interval reads about [0.992, 1]. Metrics that
are not one count over images (balanced accuracy, F1, kappa, MCC, AUC) keep the percentile bootstrap
(`metrics.bootstrap_intervals`).
"""

from __future__ import annotations

from typing import Any

from scipy.stats import binomtest

CLOPPER_PEARSON = "clopper-pearson"
BOOTSTRAP = "bootstrap-percentile"
METHOD_TEXT: dict[str, str] = {CLOPPER_PEARSON: "exact (Clopper-Pearson)", BOOTSTRAP: "percentile bootstrap"}

# How each headline metric's interval is made. Per-class precision, recall and specificity, the leukemia
# error rates and the review-flag rates are proportions too: they always get CLOPPER_PEARSON.
INTERVAL_METHOD: dict[str, str] = {
    "accuracy": CLOPPER_PEARSON,
    "balanced_accuracy": BOOTSTRAP,  # a mean of per-class recalls, not one count over images
    "macro_f1": BOOTSTRAP,
    "cohen_kappa": BOOTSTRAP,
    "mcc": BOOTSTRAP,
    "macro_roc_auc": BOOTSTRAP,
    "leukemia_sensitivity": CLOPPER_PEARSON,
    "leukemia_specificity": CLOPPER_PEARSON,
}


def proportion_interval(k: int, n: int, level: float = 0.95) -> tuple[float | None, float | None]:
    """Exact (Clopper-Pearson) interval of k successes in n trials; (None, None) when n is 0.

    >>> [round(v, 4) for v in proportion_interval(460, 460)]
    [0.992, 1.0]
    """
    if n <= 0:
        return None, None
    if not 0 <= k <= n:
        raise ValueError(f"a proportion needs 0 <= k <= n, got {k} of {n}")
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def proportion(k: int, n: int, level: float = 0.95) -> dict[str, Any]:
    """k of n with its exact interval, as metrics.json stores a rate: {k, n, value, low, high, method}
    (value, low, high and method None when n is 0)."""
    low, high = proportion_interval(k, n, level)
    return {"k": int(k), "n": int(n), "value": k / n if n else None, "low": low, "high": high,
            "method": CLOPPER_PEARSON if n > 0 else None}

"""Probability calibration: temperature scaling, expected calibration error, reliability bins.

Fine-tuned networks are over-confident: a "0.99" is right less often than 99% of the time. One scalar
temperature T, fitted on held-out validation images by minimising the negative log-likelihood of
softmax(logits / T), fixes most of that without changing any prediction (argmax is unchanged). The review
flag and the reported confidence only mean something after it.

The fitted temperature is stored beside the model (`<run>/calibration.json`) and in the model package, so
every downstream tool serves calibrated probabilities.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from leukoscope.data.fileio import write_json
from leukoscope.errors import ModelError

T_MIN, T_MAX = 0.05, 20.0
CALIBRATION_FILE = "calibration.json"


def _check_logits(logits: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim != 2 or z.shape[0] == 0:
        raise ValueError(f"logits must have shape (n >= 1, n_classes), got {z.shape}")
    if y.shape != (z.shape[0],):
        raise ValueError(f"labels must have shape ({z.shape[0]},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(f"labels must be class indices in [0, {z.shape[1] - 1}]")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits contain NaN or infinite values")
    return z, y.astype(np.int64)


def softmax(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature (numerically stable)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    from scipy.special import log_softmax  # scipy here, not at import: `leukoscope predict` starts ~1 s sooner

    z = np.asarray(logits, dtype=np.float64) / temperature
    return np.exp(log_softmax(z, axis=1))


def nll(logits: Any, labels: Any, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / temperature)."""
    from scipy.special import log_softmax

    z, y = _check_logits(logits, labels)
    return float(-log_softmax(z / temperature, axis=1)[np.arange(len(y)), y].mean())


def fit_temperature(logits: Any, labels: Any) -> float:
    """The temperature T in [0.05, 20] that calibrates softmax(logits / T) on (logits, labels).

    Normally T minimises the NLL (bounded Brent search over log T, where the NLL is smooth and well
    scaled): T > 1 softens an over-confident model, T < 1 sharpens an under-confident one. When every
    image is already classified correctly the NLL has no minimum (it keeps falling as T -> 0, which would
    make every later mistake look certain), so T is instead set where the mean confidence equals the
    Laplace-smoothed accuracy (k + 1) / (n + 2): confidence then matches what n error-free images can
    support, and no more.

    >>> rng = np.random.default_rng(0)
    >>> base = rng.normal(size=(500, 4))
    >>> y = np.array([rng.choice(4, p=softmax(row[None])[0]) for row in base])
    >>> 2.5 < fit_temperature(3 * base, y) < 3.5
    True
    """
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    z, y = _check_logits(logits, labels)
    rows = np.arange(len(y))
    bounds = (math.log(T_MIN), math.log(T_MAX))
    if len(y) and bool((z.argmax(axis=1) == y).all()):
        target = (len(y) + 1) / (len(y) + 2)

        def gap(log_t: float) -> float:
            return abs(float(np.exp(log_softmax(z / math.exp(log_t), axis=1)).max(axis=1).mean()) - target)

        result = minimize_scalar(gap, bounds=bounds, method="bounded", options={"xatol": 1e-4})
    else:

        def objective(log_t: float) -> float:
            return float(-log_softmax(z / math.exp(log_t), axis=1)[rows, y].mean())

        result = minimize_scalar(objective, bounds=bounds, method="bounded", options={"xatol": 1e-4})
    return float(min(max(math.exp(result.x), T_MIN), T_MAX))


def _top_label(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2 or p.shape[0] == 0 or y.shape != (p.shape[0],):
        raise ValueError(f"probs must be (n >= 1, n_classes) with n labels, got {p.shape} and {y.shape}")
    return p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)


def reliability_bins(probs: Any, labels: Any, n_bins: int = 15) -> dict[str, list]:
    """Top-label confidence vs accuracy in `n_bins` equal-width bins over (0, 1], for the reliability
    diagram. Empty bins have count 0 and confidence/accuracy None."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    confidence, correct = _top_label(probs, labels)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bin k holds (edges[k], edges[k+1]]; a confidence of exactly 0 (impossible for top-label) goes to bin 0
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    out: dict[str, list] = {"lower": edges[:-1].tolist(), "upper": edges[1:].tolist(),
                            "confidence": [], "accuracy": [], "count": []}
    for k in range(n_bins):
        members = index == k
        count = int(members.sum())
        out["count"].append(count)
        out["confidence"].append(float(confidence[members].mean()) if count else None)
        out["accuracy"].append(float(correct[members].mean()) if count else None)
    return out


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over equal-width top-label confidence bins.

    >>> expected_calibration_error([[0.9, 0.1], [0.9, 0.1]], [0, 1], n_bins=10)
    0.4
    """
    bins = reliability_bins(probs, labels, n_bins)
    total = sum(bins["count"])
    gap = sum(c * abs(a - p) for c, a, p in zip(bins["count"], bins["accuracy"], bins["confidence"], strict=True)
              if c)
    return round(float(gap / total), 12)


def calibration_report(raw_probs: Any, probs: Any, labels: Any, *, n_bins: int = 15) -> dict[str, Any]:
    """ECE, Brier score and log loss before (`raw_probs`) and after (`probs`) calibration."""
    from sklearn.metrics import brier_score_loss, log_loss

    y = np.asarray(labels)
    out: dict[str, Any] = {"n_bins": n_bins}
    for when, p in (("before", np.asarray(raw_probs, dtype=np.float64)), ("after", np.asarray(probs, dtype=np.float64))):
        classes = list(range(p.shape[1]))
        out[f"ece_{when}"] = expected_calibration_error(p, y, n_bins)
        out[f"brier_{when}"] = float(brier_score_loss(y, p, labels=classes))
        out[f"log_loss_{when}"] = float(log_loss(y, np.clip(p, 1e-15, 1.0), labels=classes))
    return out


# ------------------------------------------------------------------------------------------- storage


def save_temperature(folder: str | Path, temperature: float, *, fitted_on: str, n: int,
                     extra: dict[str, Any] | None = None) -> Path:
    """Write `<folder>/calibration.json` = {"temperature", "fitted_on", "n", ...}; returns its path."""
    path = Path(folder) / CALIBRATION_FILE
    write_json(path, {"temperature": float(temperature), "fitted_on": fitted_on, "n": int(n), **(extra or {})})
    return path


def read_temperature(folder: str | Path, *, strict: bool = False) -> float | None:
    """The temperature stored in `<folder>/calibration.json`, or None when absent or unreadable.

    With `strict`, a calibration.json that exists but holds no temperature in [T_MIN, T_MAX] is a
    ModelError instead: a tool that would otherwise serve uncalibrated probabilities must not do so silently.
    """
    path = Path(folder) / CALIBRATION_FILE
    try:
        value = float(json.loads(path.read_text(encoding="utf-8"))["temperature"])
    except (OSError, ValueError, KeyError, TypeError):
        value = None
    if value is not None and T_MIN <= value <= T_MAX:
        return value
    if strict and path.exists():
        raise ModelError(f"{path} holds no temperature between {T_MIN:g} and {T_MAX:g}; delete it or run "
                         "`leukoscope evaluate` on the run again")
    return None

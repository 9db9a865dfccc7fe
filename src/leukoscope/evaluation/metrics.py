"""Classification metrics over arrays, with confidence intervals and a paired McNemar test.

Point estimates come from scikit-learn, so they mean exactly what its documentation says. The bootstrap
recomputes the headline metrics on resampled images many times; doing that through scikit-learn would
cost ~10 ms per resample, so the resamples use small numpy formulas over the confusion matrix (and a
rank-based AUC) that the tests check against scikit-learn on the full data.

Intervals: a plain proportion (k of n images, e.g. accuracy, sensitivity, a class's recall) gets the
exact Clopper-Pearson interval of a binomial proportion: a percentile bootstrap cannot leave a perfect
sample (460 of 460 right gives [1, 1]), while the exact interval reads [0.992, 1]. Metrics that are not
a count over images (balanced accuracy, F1, kappa, MCC, AUC) keep the percentile bootstrap.
`intervals.INTERVAL_METHOD` is the one place that says which metric gets which.

Everything returned is a plain, JSON-serialisable dict: floats, ints, lists, and None where a metric is
undefined (e.g. the ROC-AUC of a class that never occurs in `y_true`), never NaN.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import binomtest, rankdata
from sklearn import metrics as skm

from leukoscope.evaluation.intervals import BOOTSTRAP, CLOPPER_PEARSON, INTERVAL_METHOD, proportion

# Headline metrics: the ones reported with confidence intervals, in display order, with labels.
HEADLINE: dict[str, str] = {
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "macro_f1": "Macro F1",
    "cohen_kappa": "Cohen's kappa",
    "mcc": "Matthews corr. coef.",
    "macro_roc_auc": "Macro ROC-AUC (one-vs-rest)",
    "leukemia_sensitivity": "Leukemia sensitivity",
    "leukemia_specificity": "Leukemia specificity (benign kept benign)",
}


def _clean(value: Any) -> float | None:
    """A plain float, or None for NaN/inf/None, so json.dumps never writes NaN."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _check_inputs(y_true: Any, probs: Any, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes and label range; returns int labels and row-normalised float probabilities."""
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(classes):
        raise ValueError(f"probs must have shape (n, {len(classes)}) for classes {list(classes)}, got {p.shape}")
    if y.ndim != 1 or len(y) != len(p):
        raise ValueError(f"y_true must be 1-D with {len(p)} labels, got shape {y.shape}")
    if len(y) == 0:
        raise ValueError("no samples: metrics need at least one image")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= len(classes):
        raise ValueError(f"y_true must hold class indices in [0, {len(classes) - 1}], got {np.unique(y)[:10]}")
    sums = p.sum(axis=1, keepdims=True)
    if np.any(p < 0) or np.any(sums <= 0):
        raise ValueError("probs must be non-negative with a positive sum in every row")
    return y.astype(np.int64), p / sums


# ------------------------------------------------------------------------------------ point estimates


def class_counts(cm: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(successes, trials) per class of a confusion matrix (rows = truth) for the per-class proportions:
    precision TP of predicted, recall TP of true, specificity TN of TN + FP."""
    cm = np.asarray(cm, dtype=np.int64)
    tp, rows, cols = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    negatives = cm.sum() - rows
    tn = negatives - (cols - tp)
    return {"precision": (tp, cols), "recall": (tp, rows), "specificity": (tn, negatives)}


def specificity_per_class(cm: np.ndarray) -> list[float | None]:
    """TN / (TN + FP) for each class of a confusion matrix (rows = truth); None when it has no negatives."""
    tn, negatives = class_counts(cm)["specificity"]
    return [_clean(k / n) if n > 0 else None for k, n in zip(tn, negatives, strict=True)]


def proportion_counts(cm: Any, benign_index: int | None) -> dict[str, tuple[int, int]]:
    """(successes, trials) of the headline proportions: accuracy and, with a benign class, leukemia
    sensitivity (leukemia images called any leukemia) and specificity (benign images called benign)."""
    cm = np.asarray(cm, dtype=np.int64)
    n = int(cm.sum())
    counts = {"accuracy": (int(np.trace(cm)), n)}
    if benign_index is not None:
        b = benign_index
        n_benign = int(cm[b].sum())
        missed = int(cm[:, b].sum() - cm[b, b])
        counts["leukemia_sensitivity"] = (n - n_benign - missed, n - n_benign)
        counts["leukemia_specificity"] = (int(cm[b, b]), n_benign)
    return counts


def _auc_per_class(y: np.ndarray, p: np.ndarray) -> tuple[list[float | None], list[float | None]]:
    """One-vs-rest ROC-AUC and average precision per class; None for a class absent from (or the only
    class in) y, where both are undefined."""
    roc: list[float | None] = []
    pr: list[float | None] = []
    for k in range(p.shape[1]):
        positive = y == k
        if positive.all() or not positive.any():
            roc.append(None)
            pr.append(None)
            continue
        roc.append(_clean(skm.roc_auc_score(positive, p[:, k])))
        pr.append(_clean(skm.average_precision_score(positive, p[:, k])))
    return roc, pr


def _mean_defined(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return _clean(np.mean(defined)) if defined else None


def leukemia_view(
    y_true: Any, probs: Any, *, classes: Sequence[str], benign_class: str = "Benign"
) -> dict[str, Any] | None:
    """The clinical binary view: any leukemia subtype vs benign. None when there is no benign class.

    The costly error is a leukemia image called benign (a missed case), so its count is reported as is.
    """
    if benign_class not in classes:
        return None
    y, p = _check_inputs(y_true, probs, classes)
    b = list(classes).index(benign_class)
    truth_leuk = y != b
    pred_leuk = p.argmax(axis=1) != b
    n_leuk, n_benign = int(truth_leuk.sum()), int((~truth_leuk).sum())
    missed = int((truth_leuk & ~pred_leuk).sum())
    false_alarms = int((~truth_leuk & pred_leuk).sum())
    auc = None
    if 0 < n_leuk < len(y):
        auc = _clean(skm.roc_auc_score(truth_leuk, 1.0 - p[:, b]))
    return {
        "benign_class": benign_class,
        "n_leukemia": n_leuk,
        "n_benign": n_benign,
        "sensitivity": _clean((n_leuk - missed) / n_leuk) if n_leuk else None,
        "specificity": _clean((n_benign - false_alarms) / n_benign) if n_benign else None,
        "leukemia_called_benign": missed,
        "benign_called_leukemia": false_alarms,
        "roc_auc": auc,
    }


def point_metrics(
    y_true: Any, probs: Any, *, classes: Sequence[str], benign_class: str = "Benign"
) -> dict[str, Any]:
    """Every metric on the full data (no intervals). See `compute_metrics` for the keys.

    scikit-learn's warnings about classes absent from y_true or y_pred are silenced: the behaviour in
    those cases is the documented one (zero_division=0; None for undefined AUCs).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return _point_metrics(y_true, probs, classes=classes, benign_class=benign_class)


def _point_metrics(y_true: Any, probs: Any, *, classes: Sequence[str], benign_class: str) -> dict[str, Any]:
    y, p = _check_inputs(y_true, probs, classes)
    labels = list(range(len(classes)))
    pred = p.argmax(axis=1)
    cm = skm.confusion_matrix(y, pred, labels=labels)
    prec, rec, f1, support = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    roc, pr = _auc_per_class(y, p)
    spec = specificity_per_class(cm)
    averaged = {}
    for average in ("macro", "weighted"):
        # labels=None: the average runs over classes present in y_true or y_pred (scikit-learn's default),
        # so a class absent from both does not count as a zero.
        a_p, a_r, a_f, _ = skm.precision_recall_fscore_support(y, pred, average=average, zero_division=0)
        averaged[average] = {"precision": _clean(a_p), "recall": _clean(a_r), "f1": _clean(a_f)}
    averaged["macro"].update(roc_auc=_mean_defined(roc), pr_auc=_mean_defined(pr))
    per_class = {
        name: {"precision": _clean(prec[k]), "recall": _clean(rec[k]), "f1": _clean(f1[k]),
               "specificity": spec[k], "support": int(support[k]), "roc_auc": roc[k], "pr_auc": pr[k]}
        for k, name in enumerate(classes)
    }
    leuk = leukemia_view(y, p, classes=classes, benign_class=benign_class)
    return {
        "classes": list(classes),
        "n": len(y),
        "accuracy": _clean(skm.accuracy_score(y, pred)),
        "balanced_accuracy": _clean(skm.balanced_accuracy_score(y, pred)),
        "macro_f1": averaged["macro"]["f1"],
        "weighted_f1": averaged["weighted"]["f1"],
        "cohen_kappa": _clean(skm.cohen_kappa_score(y, pred, labels=labels)),
        "mcc": _clean(skm.matthews_corrcoef(y, pred)) if len(np.unique(y)) > 1 else None,  # undefined
        "macro_roc_auc": averaged["macro"]["roc_auc"],
        "macro_pr_auc": averaged["macro"]["pr_auc"],
        "log_loss": _clean(skm.log_loss(y, np.clip(p, 1e-15, 1.0), labels=labels)),
        "brier": _clean(skm.brier_score_loss(y, p, labels=labels)),
        "leukemia_sensitivity": leuk["sensitivity"] if leuk else None,
        "leukemia_specificity": leuk["specificity"] if leuk else None,
        "per_class": per_class,
        "macro": averaged["macro"],
        "weighted": averaged["weighted"],
        "confusion_matrix": cm.astype(int).tolist(),
        "leukemia_vs_benign": leuk,
    }


# ------------------------------------------------------------------------------ bootstrap (fast path)


def rank_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """ROC-AUC by the Mann-Whitney rank formula (ties averaged): equal to roc_auc_score, ~20x faster."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def headline_from_confusion(cm: np.ndarray, benign_index: int | None) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro F1, kappa, MCC and the leukemia view from a confusion matrix,
    with scikit-learn's conventions (NaN where undefined)."""
    counts = proportion_counts(cm, benign_index)
    cm = np.asarray(cm, dtype=np.float64)
    n = cm.sum()
    tp = np.diag(cm)
    rows, cols = cm.sum(axis=1), cm.sum(axis=0)
    present = rows > 0
    recall = np.divide(tp, rows, out=np.zeros_like(tp), where=rows > 0)
    f1_denominator = rows + cols
    f1 = np.divide(2 * tp, f1_denominator, out=np.zeros_like(tp), where=f1_denominator > 0)
    expected = (rows @ cols) / n**2
    kappa = (tp.sum() / n - expected) / (1 - expected) if expected < 1 else math.nan
    cov_tp = tp.sum() * n - rows @ cols
    cov_pp, cov_tt = n**2 - cols @ cols, n**2 - rows @ rows
    out = {
        "balanced_accuracy": recall[present].mean(),
        "macro_f1": f1[f1_denominator > 0].mean(),
        "cohen_kappa": kappa,
        "mcc": cov_tp / math.sqrt(cov_tt * cov_pp) if cov_tt * cov_pp > 0 else 0.0,
    }
    for name in ("accuracy", "leukemia_sensitivity", "leukemia_specificity"):
        k, trials = counts.get(name, (0, 0))
        out[name] = k / trials if trials else math.nan
    return out


def bootstrap_intervals(
    y_true: Any,
    probs: Any,
    *,
    classes: Sequence[str],
    benign_class: str = "Benign",
    n_bootstrap: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, list[float | None]]:
    """Percentile bootstrap intervals of the headline metrics whose INTERVAL_METHOD is BOOTSTRAP (the
    proportions get exact intervals instead), resampling images with replacement.

    Deterministic for a given seed. Resamples where a metric is undefined (e.g. no benign image drawn)
    are left out of that metric's interval.
    """
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be at least 1, got {n_bootstrap}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    y, p = _check_inputs(y_true, probs, classes)
    n_classes = len(classes)
    benign = list(classes).index(benign_class) if benign_class in classes else None
    pred = p.argmax(axis=1)
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {name: [] for name in HEADLINE if INTERVAL_METHOD[name] == BOOTSTRAP}
    for _ in range(n_bootstrap):
        idx = rng.integers(0, len(y), len(y))
        yt, yp = y[idx], pred[idx]
        cm = np.bincount(yt * n_classes + yp, minlength=n_classes**2).reshape(n_classes, n_classes)
        values = headline_from_confusion(cm, benign)
        aucs = [rank_auc(yt == k, p[idx, k]) for k in range(n_classes) if 0 < cm[k].sum() < len(yt)]
        values["macro_roc_auc"] = float(np.mean(aucs)) if aucs else math.nan
        for name, kept in samples.items():
            kept.append(values[name])
    tail = (1 - level) / 2 * 100
    intervals: dict[str, list[float | None]] = {}
    for name, values in samples.items():
        arr = np.asarray(values, dtype=np.float64)
        arr = arr[np.isfinite(arr)]
        if len(arr) == 0:
            intervals[name] = [None, None]
        else:
            low, high = np.percentile(arr, [tail, 100 - tail])
            intervals[name] = [_clean(low), _clean(high)]
    return intervals


def compute_metrics(
    y_true: Any,
    probs: Any,
    *,
    classes: Sequence[str],
    benign_class: str = "Benign",
    n_bootstrap: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """All evaluation metrics of predicted probabilities `probs` (n, C) against labels `y_true` (n,).

    Keys: classes, n, accuracy, balanced_accuracy, macro_f1, weighted_f1, cohen_kappa, mcc,
    macro_roc_auc, macro_pr_auc, log_loss, brier (multi-class: mean over images of the summed squared
    error, 0..2), leukemia_sensitivity, leukemia_specificity, per_class {class: precision, recall, f1,
    specificity, support, roc_auc, pr_auc}, macro, weighted, confusion_matrix (rows = truth),
    leukemia_vs_benign, headline {metric: {label, value, low, high, method}}, bootstrap {n_resamples, seed,
    level, method}. Intervals: `method` is INTERVAL_METHOD's ("clopper-pearson" for proportions, with their
    k and n; "bootstrap-percentile" otherwise), None where there is no interval. Per class, `intervals`
    {precision, recall, specificity} and leukemia_vs_benign's `rates` {leukemia_called_benign,
    benign_called_leukemia} are `proportion` dicts. `n_bootstrap=0` skips the bootstrap intervals only;
    exact intervals cost nothing and are always given.

    >>> m = compute_metrics([0, 1, 1], [[.9, .1], [.2, .8], [.6, .4]], classes=["Benign", "ALL"],
    ...                     n_bootstrap=0)
    >>> round(m["accuracy"], 3), m["confusion_matrix"], m["leukemia_vs_benign"]["leukemia_called_benign"]
    (0.667, [[1, 0], [1, 1]], 1)
    """
    result = point_metrics(y_true, probs, classes=classes, benign_class=benign_class)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    intervals: dict[str, list[float | None]] = {}
    if n_bootstrap > 0:
        intervals = bootstrap_intervals(y_true, probs, classes=classes, benign_class=benign_class,
                                        n_bootstrap=n_bootstrap, seed=seed, level=level)
    cm = result["confusion_matrix"]
    counts = proportion_counts(cm, list(classes).index(benign_class) if benign_class in classes else None)
    result["headline"] = {}
    for name, label in HEADLINE.items():
        entry: dict[str, Any] = {"label": label, "value": result[name], "low": None, "high": None, "method": None}
        if result[name] is None:
            pass  # no interval around an undefined value (e.g. MCC of one-class data)
        elif INTERVAL_METHOD[name] == CLOPPER_PEARSON:
            exact = proportion(*counts[name], level)
            entry.update(low=exact["low"], high=exact["high"], method=exact["method"], k=exact["k"], n=exact["n"])
        elif intervals.get(name, [None])[0] is not None:
            entry.update(low=intervals[name][0], high=intervals[name][1], method=BOOTSTRAP)
        result["headline"][name] = entry
    per_class_counts = class_counts(cm)
    for i, name in enumerate(classes):
        result["per_class"][name]["intervals"] = {
            metric: proportion(k[i], n[i], level) for metric, (k, n) in per_class_counts.items()}
    leuk = result["leukemia_vs_benign"]
    if leuk is not None:
        leuk["rates"] = {
            "leukemia_called_benign": proportion(leuk["leukemia_called_benign"], leuk["n_leukemia"], level),
            "benign_called_leukemia": proportion(leuk["benign_called_leukemia"], leuk["n_benign"], level)}
    result["bootstrap"] = {"n_resamples": n_bootstrap, "seed": seed, "level": level, "method": "percentile"}
    return result



# ------------------------------------------------------------------------------------- paired testing


def mcnemar_exact(correct_a: Any, correct_b: Any) -> dict[str, Any]:
    """Exact McNemar test of two classifiers on the same images: is the accuracy difference real?

    Only discordant pairs carry information: b = images A got right and B wrong, c = the reverse. Under
    "no difference" b ~ Binomial(b + c, 1/2); the p-value is the two-sided exact binomial test.

    >>> mcnemar_exact([1, 1, 1, 0], [1, 0, 0, 0])["a_only"]
    2
    """
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"correct_a and correct_b must be 1-D of equal length, got {a.shape} and {b.shape}")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    discordant = a_only + b_only
    p_value = binomtest(a_only, discordant, 0.5).pvalue if discordant else 1.0
    return {
        "n": len(a), "both_correct": int((a & b).sum()), "both_wrong": int((~a & ~b).sum()),
        "a_only": a_only, "b_only": b_only,
        "accuracy_a": _clean(a.mean()) if len(a) else None,
        "accuracy_b": _clean(b.mean()) if len(b) else None,
        "p_value": float(p_value),
    }

"""leukoscope.evaluation.metrics against hand-computed cases, scikit-learn, and the bootstrap's basic promises."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn import metrics as skm

from leukoscope.evaluation.intervals import BOOTSTRAP, CLOPPER_PEARSON, INTERVAL_METHOD, proportion, proportion_interval
from leukoscope.evaluation.metrics import (
    HEADLINE,
    bootstrap_intervals,
    compute_metrics,
    headline_from_confusion,
    leukemia_view,
    mcnemar_exact,
    point_metrics,
    rank_auc,
    specificity_per_class,
)

CLASSES = ("Benign", "Early Pre-B", "Pre-B", "Pro-B")
# Hand-worked case: class 3 (Pro-B) occurs once in the truth and is never predicted.
Y_TRUE = np.array([0, 0, 0, 1, 1, 2, 2, 3])
Y_PRED = np.array([0, 0, 1, 1, 1, 2, 0, 2])


def one_hot_probs(pred: np.ndarray, n_classes: int = 4, high: float = 0.7) -> np.ndarray:
    probs = np.full((len(pred), n_classes), (1 - high) / (n_classes - 1))
    probs[np.arange(len(pred)), pred] = high
    return probs


def test_hand_computed_case_with_a_class_never_predicted():
    m = point_metrics(Y_TRUE, one_hot_probs(Y_PRED), classes=CLASSES)
    assert m["confusion_matrix"] == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 1, 0]]
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 1 / 2 + 0) / 4)
    pro = m["per_class"]["Pro-B"]
    assert (pro["precision"], pro["recall"], pro["f1"], pro["support"]) == (0.0, 0.0, 0.0, 1)
    assert pro["specificity"] == 1.0  # never predicted: no false positive
    assert m["per_class"]["Benign"]["specificity"] == pytest.approx(4 / 5)
    assert m["per_class"]["Benign"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["Early Pre-B"]["f1"] == pytest.approx(0.8)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 0.5 + 0) / 4)
    assert m["cohen_kappa"] == pytest.approx((5 / 8 - 19 / 64) / (1 - 19 / 64))
    assert m["mcc"] == pytest.approx(21 / np.sqrt(42 * 46))
    leuk = m["leukemia_vs_benign"]
    assert (leuk["n_leukemia"], leuk["n_benign"]) == (5, 3)
    assert leuk["leukemia_called_benign"] == 1 and leuk["benign_called_leukemia"] == 1
    assert leuk["sensitivity"] == pytest.approx(4 / 5)
    assert leuk["specificity"] == pytest.approx(2 / 3)
    assert m["leukemia_sensitivity"] == leuk["sensitivity"]


def test_auc_by_hand_and_none_for_a_class_absent_from_the_truth():
    probs = np.array([[0.9, 0.1, 0, 0], [0.6, 0.4, 0, 0], [0.65, 0.35, 0, 0], [0.2, 0.8, 0, 0]])
    m = point_metrics([0, 0, 1, 1], probs, classes=CLASSES)
    assert m["per_class"]["Early Pre-B"]["roc_auc"] == pytest.approx(0.75)  # the textbook 4-point example
    assert m["per_class"]["Pre-B"]["roc_auc"] is None
    assert m["per_class"]["Pro-B"]["pr_auc"] is None
    assert m["macro_roc_auc"] == pytest.approx(0.75)  # mean over the classes where it is defined
    assert m["leukemia_vs_benign"]["roc_auc"] == pytest.approx(0.75)


def test_other_metrics_match_scikit_learn_on_random_data():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 200)
    probs = rng.dirichlet(np.ones(4), 200)
    probs[np.arange(200), y] += 0.3
    probs /= probs.sum(axis=1, keepdims=True)
    m = point_metrics(y, probs, classes=CLASSES)
    assert m["macro_roc_auc"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr"))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, probs))
    assert m["brier"] == pytest.approx(np.mean(np.sum((probs - np.eye(4)[y]) ** 2, axis=1)))
    assert m["weighted_f1"] == pytest.approx(skm.f1_score(y, probs.argmax(1), average="weighted"))


def test_confusion_matrix_fast_path_agrees_with_scikit_learn():
    rng = np.random.default_rng(2)
    for n_classes_present in (4, 3):
        y = rng.integers(0, n_classes_present, 150)
        pred = np.where(rng.random(150) < 0.6, y, rng.integers(0, 4, 150))
        cm = skm.confusion_matrix(y, pred, labels=range(4))
        fast = headline_from_confusion(cm, benign_index=0)
        slow = point_metrics(y, one_hot_probs(pred), classes=CLASSES)
        for name in ("accuracy", "balanced_accuracy", "macro_f1", "cohen_kappa", "mcc",
                     "leukemia_sensitivity", "leukemia_specificity"):
            assert fast[name] == pytest.approx(slow[name]), name


def test_rank_auc_equals_roc_auc_with_ties():
    rng = np.random.default_rng(3)
    positive = rng.random(300) < 0.3
    scores = np.round(rng.random(300) + positive * 0.3, 1)  # rounding makes ties
    assert rank_auc(positive, scores) == pytest.approx(skm.roc_auc_score(positive, scores))
    assert np.isnan(rank_auc(np.zeros(5, bool), scores[:5]))


def synthetic(n: int, accuracy: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    pred = np.where(rng.random(n) < accuracy, y, (y + rng.integers(1, 4, n)) % 4)
    probs = one_hot_probs(pred) + rng.random((n, 4)) * 0.1
    return y, probs / probs.sum(axis=1, keepdims=True)


def test_bootstrap_intervals_contain_the_estimate_and_narrow_with_more_data():
    small = compute_metrics(*synthetic(100, 0.7, 0), classes=CLASSES, n_bootstrap=300, seed=0)
    large = compute_metrics(*synthetic(2000, 0.7, 0), classes=CLASSES, n_bootstrap=300, seed=0)
    for name in HEADLINE:
        for result in (small, large):
            h = result["headline"][name]
            assert h["low"] <= h["value"] <= h["high"], (name, h)
        width_small = small["headline"][name]["high"] - small["headline"][name]["low"]
        width_large = large["headline"][name]["high"] - large["headline"][name]["low"]
        assert width_large < width_small, name


def test_bootstrap_is_deterministic_for_a_seed_and_serialisable():
    y, probs = synthetic(50, 0.7, 4)
    a = bootstrap_intervals(y, probs, classes=CLASSES, n_bootstrap=50, seed=7)
    b = bootstrap_intervals(y, probs, classes=CLASSES, n_bootstrap=50, seed=7)
    c = bootstrap_intervals(y, probs, classes=CLASSES, n_bootstrap=50, seed=8)
    assert a == b and a != c
    result = compute_metrics(y, probs, classes=CLASSES, n_bootstrap=20)
    json.dumps(result, allow_nan=False)
    assert result["bootstrap"] == {"n_resamples": 20, "seed": 0, "level": 0.95, "method": "percentile"}


def test_no_bootstrap_and_undefined_intervals_are_none():
    result = compute_metrics([1, 2, 3], one_hot_probs(np.array([1, 2, 3])), classes=CLASSES, n_bootstrap=0)
    assert result["headline"]["macro_f1"]["low"] is None and result["headline"]["macro_f1"]["method"] is None
    assert result["headline"]["accuracy"]["method"] == CLOPPER_PEARSON  # exact intervals need no resampling
    no_benign = compute_metrics([1, 2, 3], one_hot_probs(np.array([1, 2, 3])), classes=CLASSES, n_bootstrap=10)
    assert no_benign["headline"]["leukemia_specificity"] == {
        "label": HEADLINE["leukemia_specificity"], "value": None, "low": None, "high": None, "method": None}


def test_a_perfect_sample_gets_an_exact_interval_below_one():
    """460 of 460 right: the percentile bootstrap said [1.000, 1.000]; the exact interval leaves the sample."""
    y = np.repeat(np.arange(4), 115)
    result = compute_metrics(y, one_hot_probs(y), classes=CLASSES, n_bootstrap=200)
    accuracy = result["headline"]["accuracy"]
    assert (accuracy["value"], accuracy["k"], accuracy["n"], accuracy["method"]) == (1.0, 460, 460, CLOPPER_PEARSON)
    assert accuracy["high"] == 1.0 and accuracy["low"] == pytest.approx(0.025 ** (1 / 460))  # ~0.992
    assert 0.991 < accuracy["low"] < 0.993
    for name in ("leukemia_sensitivity", "leukemia_specificity"):
        h = result["headline"][name]
        assert h["method"] == CLOPPER_PEARSON and h["low"] < 1.0 == h["high"], name
    assert result["headline"]["leukemia_specificity"]["n"] == 115
    recall = result["per_class"]["Pro-B"]["intervals"]["recall"]
    assert (recall["k"], recall["n"], recall["method"]) == (115, 115, CLOPPER_PEARSON) and recall["low"] < 1.0
    missed = result["leukemia_vs_benign"]["rates"]["leukemia_called_benign"]
    assert (missed["k"], missed["n"], missed["low"]) == (0, 345, 0.0)
    assert missed["high"] == pytest.approx(1 - 0.025 ** (1 / 345)) and missed["high"] > 0  # 0 of n: upper > 0
    json.dumps(result, allow_nan=False)


def test_only_non_proportions_are_bootstrapped():
    y = np.repeat(np.arange(4), 115)
    result = compute_metrics(y, one_hot_probs(y), classes=CLASSES, n_bootstrap=50)
    for name in ("balanced_accuracy", "macro_f1", "cohen_kappa", "mcc", "macro_roc_auc"):
        assert INTERVAL_METHOD[name] == BOOTSTRAP
        assert result["headline"][name]["method"] == BOOTSTRAP, name
        assert result["headline"][name]["low"] == result["headline"][name]["high"] == 1.0, name  # perfect resamples
    assert set(bootstrap_intervals(y, one_hot_probs(y), classes=CLASSES, n_bootstrap=5)) == {
        name for name, method in INTERVAL_METHOD.items() if method == BOOTSTRAP}


def test_exact_intervals_match_scipy_and_count_right():
    y, probs = synthetic(300, 0.8, 5)
    result = compute_metrics(y, probs, classes=CLASSES, n_bootstrap=0, level=0.9)
    cm = np.asarray(result["confusion_matrix"])
    accuracy = result["headline"]["accuracy"]
    ci = binomtest(int(np.trace(cm)), 300).proportion_ci(confidence_level=0.9, method="exact")
    assert (accuracy["low"], accuracy["high"]) == pytest.approx((ci.low, ci.high))
    precision = result["per_class"]["Pre-B"]["intervals"]["precision"]
    assert (precision["k"], precision["n"]) == (cm[2, 2], cm[:, 2].sum())
    assert precision["value"] == pytest.approx(result["per_class"]["Pre-B"]["precision"])
    specificity = result["per_class"]["Benign"]["intervals"]["specificity"]
    assert specificity["value"] == pytest.approx(result["per_class"]["Benign"]["specificity"])
    assert specificity["low"] <= specificity["value"] <= specificity["high"]


def test_proportion_of_nothing_and_bad_counts():
    assert proportion(0, 0) == {"k": 0, "n": 0, "value": None, "low": None, "high": None, "method": None}
    low, high = proportion_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 10))
    with pytest.raises(ValueError, match="0 <= k <= n"):
        proportion_interval(11, 10)


def test_no_benign_class_means_no_leukemia_view():
    assert leukemia_view([0, 1], np.eye(2), classes=("eosinophil", "neutrophil")) is None
    m = point_metrics([0, 1], np.eye(2), classes=("eosinophil", "neutrophil"))
    assert m["leukemia_vs_benign"] is None and m["leukemia_sensitivity"] is None


def test_specificity_per_class_none_without_negatives():
    assert specificity_per_class([[3]]) == [None]


@pytest.mark.parametrize(
    ("y", "probs", "match"),
    [
        ([0, 1], np.ones((2, 3)) / 3, "shape"),
        ([0, 1, 2], np.ones((2, 4)) / 4, "1-D"),
        ([0, 7], np.ones((2, 4)) / 4, "class indices"),
        ([], np.ones((0, 4)), "no samples"),
        ([0, 1], -np.ones((2, 4)), "non-negative"),
    ],
)
def test_bad_input_raises_value_error_naming_the_problem(y, probs, match):
    with pytest.raises(ValueError, match=match):
        compute_metrics(y, probs, classes=CLASSES, n_bootstrap=0)


def test_mcnemar_exact_by_hand():
    a = [1] * 5 + [1] * 10 + [0] * 3
    b = [0] * 5 + [1] * 10 + [0] * 3
    test = mcnemar_exact(a, b)
    assert (test["a_only"], test["b_only"], test["both_correct"], test["both_wrong"]) == (5, 0, 10, 3)
    assert test["p_value"] == pytest.approx(2 * 0.5**5)  # two-sided exact binomial, 5 of 5 discordant
    assert mcnemar_exact([1, 0], [1, 0])["p_value"] == 1.0  # no discordant pair: no evidence
    with pytest.raises(ValueError):
        mcnemar_exact([1, 0], [1])

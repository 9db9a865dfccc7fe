"""Temperature scaling and calibration error on synthetic models whose miscalibration is known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from leukoscope.errors import ModelError
from leukoscope.review.calibration import (
    T_MAX,
    T_MIN,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    nll,
    read_temperature,
    reliability_bins,
    save_temperature,
    softmax,
)


def calibrated_sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits): a perfectly calibrated model by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=1.5, size=(n, 4))
    probs = softmax(logits)
    labels = (rng.random(n)[:, None] > np.cumsum(probs, axis=1)).sum(axis=1)
    return logits, labels


def test_temperature_scaling_lowers_ece_of_an_over_confident_model():
    logits, labels = calibrated_sample(3000, 0)
    over = 3.0 * logits  # same ranking, three times too sharp
    temperature = fit_temperature(over[:1500], labels[:1500])  # fit on "val", check on "test"
    assert 2.6 < temperature < 3.4
    before = expected_calibration_error(softmax(over[1500:]), labels[1500:])
    after = expected_calibration_error(softmax(over[1500:], temperature), labels[1500:])
    assert after < before / 2
    assert nll(over[1500:], labels[1500:], temperature) < nll(over[1500:], labels[1500:])


def test_calibration_report_before_and_after():
    logits, labels = calibrated_sample(500, 2)
    report = calibration_report(softmax(3 * logits), softmax(logits), labels, n_bins=10)
    assert report["n_bins"] == 10
    for metric in ("ece", "brier", "log_loss"):
        assert report[f"{metric}_after"] < report[f"{metric}_before"], metric


def test_temperature_sharpens_an_under_confident_model_and_keeps_predictions():
    logits, labels = calibrated_sample(2000, 1)
    temperature = fit_temperature(logits / 2, labels)
    assert 0.4 < temperature < 0.6
    assert (softmax(logits / 2, temperature).argmax(1) == (logits / 2).argmax(1)).all()


def test_temperature_is_clamped():
    logits = np.array([[5.0, 0.0], [0.0, 5.0]] * 10)
    labels = np.array([0, 1] * 10)
    # perfectly separable: the NLL keeps falling as T -> 0, so the mean confidence is matched to the
    # Laplace-smoothed accuracy (n + 1) / (n + 2) instead of becoming certain
    t = fit_temperature(logits, labels)
    assert T_MIN <= t <= T_MAX
    assert softmax(logits, t).max(axis=1).mean() == pytest.approx(21 / 22, abs=1e-3)
    # always wrong: the NLL keeps falling as T grows (towards uniform), never above the ceiling
    assert 10 < fit_temperature(logits, 1 - labels) <= T_MAX


def test_ece_and_reliability_bins_by_hand():
    probs = [[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]]
    labels = [0, 1, 0, 1]  # 0.9 bin: 1 of 2 right; 0.6 bin: right; 0.7 bin: right
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(
        (2 * abs(0.5 - 0.9) + abs(1 - 0.6) + abs(1 - 0.7)) / 4)
    bins = reliability_bins(probs, labels, n_bins=10)
    assert sum(bins["count"]) == 4
    assert bins["count"][8] == 2 and bins["accuracy"][8] == 0.5 and bins["confidence"][8] == pytest.approx(0.9)
    assert bins["accuracy"][0] is None and bins["count"][0] == 0
    assert expected_calibration_error([[1.0, 0.0]], [0]) == 0.0


@pytest.mark.parametrize(
    ("logits", "labels"),
    [(np.zeros((0, 3)), np.zeros(0, int)), (np.zeros((2, 3)), np.array([0, 3])), (np.zeros(3), np.zeros(3, int)),
     (np.array([[np.nan, 0.0]]), np.array([0]))],
)
def test_bad_input_raises_value_error(logits, labels):
    with pytest.raises(ValueError):
        fit_temperature(logits, labels)


def test_temperature_round_trip(tmp_path):
    assert read_temperature(tmp_path) is None
    path = save_temperature(tmp_path, 1.7, fitted_on="val", n=12)
    assert json.loads(path.read_text()) == {"temperature": 1.7, "fitted_on": "val", "n": 12}
    assert read_temperature(tmp_path) == 1.7
    path.write_text("not json")
    assert read_temperature(tmp_path) is None


@pytest.mark.parametrize("content", ["not json", '{"n": 3}', '{"temperature": 0}', '{"temperature": 50}', "[1.5]"])
def test_strict_read_refuses_a_calibration_json_without_a_temperature(tmp_path, content):
    assert read_temperature(tmp_path, strict=True) is None  # no file: nothing to refuse
    (tmp_path / "calibration.json").write_text(content)
    assert read_temperature(tmp_path) is None
    with pytest.raises(ModelError, match=r"calibration\.json holds no temperature"):
        read_temperature(tmp_path, strict=True)
    save_temperature(tmp_path, 1.7, fitted_on="val", n=12)
    assert read_temperature(tmp_path, strict=True) == 1.7

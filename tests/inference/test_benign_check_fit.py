"""leukoscope.inference.benign_check_fit: the candidates its rule compares, how it scores one, its choice, and a
whole fit on a tiny package (the bundled package's check and every adapted package's come from it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from leukoscope.data.manifest import read_manifest_csv
from leukoscope.data.shifts import validation_shifts
from leukoscope.errors import DataError
from leukoscope.inference import benign_check_fit as fit
from leukoscope.inference.predictor import load_predictor
from leukoscope.review.benign_check import BenignCheck
from leukoscope.review.realign import View


def test_candidates_are_the_written_grid_with_the_package_threshold_and_no_check() -> None:
    found = fit.candidates(0.9997)
    names = [name for name, _ in found]
    assert names[0] == fit.NO_CHECK and found[0][1] is None and len(names) == len(set(names))
    assert len(names) == 1 + len(fit.CANDIDATE_VIEWS) * (len(fit.CANDIDATE_THRESHOLDS) + 1)
    assert {c.threshold for _, c in found[1:]} == {*fit.CANDIDATE_THRESHOLDS, 0.9997}
    assert len(fit.candidates(0.999)) == 1 + len(fit.CANDIDATE_VIEWS) * len(fit.CANDIDATE_THRESHOLDS)
    assert [v.scale for v in fit.all_views()] == [0.5, 0.71, 1.41, 2.0]


def test_a_candidate_flags_only_the_unflagged_benign_calls_a_view_doubts() -> None:
    views = fit.all_views()
    # images: 0 Benign called Benign, 1 leukemia called Benign, 2 leukemia called Benign but flagged already,
    # 3 leukemia called leukemia
    out = fit.CopyOutputs(labels=np.array([0, 1, 2, 3]), called=np.array([0, 0, 0, 3]),
                          flagged=np.array([False, False, True, False]), rows=np.array([0, 1]),
                          p_benign=np.array([[0.9999, 0.9999], [0.9999, 0.9999], [0.9999, 0.9999],
                                             [0.9999, 0.95]]))  # x2 doubts image 1
    assert fit.with_check(None, views, out, 0) == {"flagged": 0.25, "leukemia_called_benign_not_flagged": 1}
    x2 = BenignCheck((View(scale=2.0),), 0.99)
    assert fit.with_check(x2, views, out, 0) == {"flagged": 0.5, "leukemia_called_benign_not_flagged": 0}
    x05 = BenignCheck((View(scale=0.5),), 0.99)
    assert fit.with_check(x05, views, out, 0)["leukemia_called_benign_not_flagged"] == 1
    strict = BenignCheck((View(scale=0.5),), 0.99995)  # doubts both: flags the Benign image too
    assert fit.with_check(strict, views, out, 0) == {"flagged": 0.75, "leukemia_called_benign_not_flagged": 0}


def test_the_choice_keeps_the_flag_cap_then_fewest_misses_then_fewest_flags() -> None:
    def row(flagged: float, missed: int = 0) -> dict:
        return {"flagged": flagged, "leukemia_called_benign_not_flagged": missed}

    checks = {fit.NO_CHECK: None, "cheap": BenignCheck((View(scale=2.0),), 0.9),
              "costly": BenignCheck((View(scale=2.0),), 0.999), "too costly": BenignCheck((View(scale=2.0),), 0.9999),
              "two views": BenignCheck((View(scale=2.0), View(scale=0.5)), 0.999)}
    table = {fit.NO_CHECK: {"none": row(0.10), "x2": row(0.5, 3)},
             "cheap": {"none": row(0.11), "x2": row(0.5, 1)},
             "costly": {"none": row(0.14), "x2": row(0.6, 0)},
             "too costly": {"none": row(0.16), "x2": row(0.6, 0)},  # more than 5 points above 0.10
             "two views": {"none": row(0.14), "x2": row(0.6, 0)}}
    assert fit.choose(table, checks) == "costly"  # fewest misses in the cap; fewer views than "two views"
    assert fit.choose(table, checks, max_flag_rise=0.02) == "cheap"
    assert fit.choose(table, checks, max_flag_rise=0.0) == fit.NO_CHECK
    no_misses = {name: {"none": rows["none"], "x2": {**rows["x2"], "leukemia_called_benign_not_flagged": 0}}
                 for name, rows in table.items()}
    assert fit.choose(no_misses, checks) == fit.NO_CHECK  # nothing to catch: no check buys flags for nothing


@pytest.fixture(scope="module")
def tiny_val(tmp_path_factory: pytest.TempPathFactory):
    from tests.helpers.modelfixtures import shared_tiny_run

    run = shared_tiny_run(tmp_path_factory)
    return read_manifest_csv(run / "split.csv", run.parent / "data").part("val")


def test_a_fit_on_a_tiny_package_reads_every_copy_and_matches_predict_bytes(tiny_package: Path, tiny_val) -> None:
    predictor = load_predictor(tiny_package, threads=1)
    predictor.benign_check = BenignCheck((View(scale=2.0),), 0.5)  # the package's own check is off during the fit
    lines: list[str] = []
    found = fit.fit_benign_check(predictor, tiny_val, composites=1, seed=7, log=lines.append)
    assert predictor.benign_check is None  # and stays off: the caller decides what to write
    names = {name for name, _ in fit.candidates(predictor.benign_threshold)}
    assert found.chosen in names and set(found.summary) == names
    copies = list(found.per_copy)
    assert copies == list(validation_shifts(len(tiny_val), composites=1, seed=7))  # as is, named, one composite
    assert len(lines) == len(copies) and all(line.startswith("Benign check: val copy ") for line in lines)
    for name, rows in found.per_copy.items():  # the chosen check can only add flags, never a missed leukemia
        assert rows["after"]["flagged"] >= rows["before"]["flagged"], name
        assert (rows["after"]["leukemia_called_benign_not_flagged"]
                <= rows["before"]["leukemia_called_benign_not_flagged"]), name
    if found.check is None:
        assert found.chosen == fit.NO_CHECK
    record = found.record()
    assert record["rule"] == fit.RULE and record["chosen"] == found.chosen and record["seconds"] >= 0


def test_a_fit_without_val_images_or_a_benign_class_is_refused(tiny_package: Path, tiny_val) -> None:
    predictor = load_predictor(tiny_package, threads=1)
    with pytest.raises(DataError, match="no val images"):
        fit.fit_benign_check(predictor, tiny_val.with_records([]))
    predictor.benign_index = None
    with pytest.raises(DataError, match="no Benign class"):
        fit.fit_benign_check(predictor, tiny_val)


def _joint_copy(labels, p_benign, other=None, rows_p=None):
    """A JointCopy of 2 classes (0 Benign) from P(Benign) per image and the x2 view's P(Benign) per row."""
    labels, p = np.asarray(labels), np.asarray(p_benign, float)
    other = np.zeros(len(p), bool) if other is None else np.asarray(other)
    probs = np.stack([p, 1 - p], 1)
    rows = np.flatnonzero((p > 0.5) & ~other)
    views = fit.all_views()
    p_views = np.ones((len(views), len(rows)))
    if rows_p is not None:
        p_views[views.index(View(scale=2.0))] = np.asarray(rows_p, float)
    return fit.JointCopy(labels, probs, other, other.copy(), rows, p_views)


def test_the_joint_rule_lets_the_check_catch_what_a_stricter_benign_threshold_would_cost() -> None:
    # unshifted: 10 Benign images at 0.9995-0.99999, 2 leukemia called leukemia. Shifted: a leukemia image
    # called Benign at 0.999999 that x2 doubts (P(Benign) 0.2 there), and 10 Benign images that x2 does not.
    benign_p = [0.9995, 0.9996, 0.9997, 0.9998, 0.9999, 0.99991, 0.99993, 0.99995, 0.99997, 0.99999]
    plain = _joint_copy([0] * 10 + [1, 1], [*benign_p, 0.1, 0.2])
    shifted = _joint_copy([0] * 10 + [1], [*benign_p, 0.999999], rows_p=[0.9999] * 10 + [0.2])
    copies = {"none": plain, "x2": shifted}
    checks = {fit.NO_CHECK: None, "views x2; P(Benign) >= 0.5": BenignCheck((View(scale=2.0),), 0.5),
              "views x2; P(Benign) >= 0.99999": BenignCheck((View(scale=2.0),), 0.99999)}
    table = fit.joint_table(copies, checks, fit.all_views(), benign=0, confidence_threshold=0.9, max_flag_rise=1.0)
    assert table[fit.NO_CHECK]["threshold"] == 0.9999995  # 1 - 1e-6 / 2: every Benign image goes to review
    assert table[fit.NO_CHECK]["copies"]["none"]["flagged"] == 10 / 12
    caught = table["views x2; P(Benign) >= 0.5"]
    assert caught["threshold"] == 0.9 and caught["copies"]["x2"]["leukemia_called_benign_not_flagged"] == 0
    assert caught["copies"]["none"]["flagged"] == 0.0  # the check caught the miss: no Benign call needs review
    assert fit.choose_joint(table, checks) == "views x2; P(Benign) >= 0.5"
    capped = fit.joint_table(copies, checks, fit.all_views(), benign=0, confidence_threshold=0.9, max_flag_rise=0.05)
    assert capped[fit.NO_CHECK]["copies"]["x2"]["leukemia_called_benign_not_flagged"] == 1  # the cap binds
    assert fit.choose_joint(capped, checks) == "views x2; P(Benign) >= 0.5"
    strict = "views x2; P(Benign) >= 0.99999"  # doubts every shifted Benign image: over the cap there
    assert capped[strict]["copies"]["x2"]["flagged"] == 1.0


def test_a_joint_fit_on_a_tiny_package_matches_predict_bytes(tiny_package: Path, tiny_val) -> None:
    predictor = load_predictor(tiny_package, threads=1)
    before = predictor.benign_threshold
    found = fit.fit_benign_rules(predictor, tiny_val, composites=1, seed=7)
    assert predictor.benign_check is None and predictor.benign_threshold == before
    assert found.chosen in found.summary and found.threshold >= predictor.confidence_threshold
    assert found.summary[found.chosen]["benign_confidence_threshold"] == found.threshold
    assert list(found.per_copy) == list(validation_shifts(len(tiny_val), composites=1, seed=7))
    assert set(found.per_copy["none"]) == {"package_as_exported", "after"}
    assert found.record()["rule"] == fit.JOINT_RULE

"""scripts/fit_benign_check.py: the candidates its rule compares, how it scores one, its choice and card section."""

from __future__ import annotations

import numpy as np

from leukoscope.review.benign_check import BenignCheck
from leukoscope.review.realign import View
from tests.scripts.test_refit_review import script


def fit_benign_check():
    return script("fit_benign_check")


def test_candidates_are_the_written_grid_with_the_package_threshold_and_no_check() -> None:
    module = fit_benign_check()
    found = module.candidates(0.9997)
    names = [name for name, _ in found]
    assert names[0] == module.NO_CHECK and found[0][1] is None and len(names) == len(set(names))
    assert len(names) == 1 + len(module.CANDIDATE_VIEWS) * (len(module.CANDIDATE_THRESHOLDS) + 1)
    assert {c.threshold for _, c in found[1:]} == {*module.CANDIDATE_THRESHOLDS, 0.9997}
    assert len(module.candidates(0.999)) == 1 + len(module.CANDIDATE_VIEWS) * len(module.CANDIDATE_THRESHOLDS)
    assert [v.scale for v in module.all_views()] == [0.5, 0.71, 1.41, 2.0]


def test_a_candidate_flags_only_the_unflagged_benign_calls_a_view_doubts() -> None:
    module = fit_benign_check()
    views = module.all_views()
    # images: 0 Benign called Benign, 1 leukemia called Benign, 2 leukemia called Benign but flagged already,
    # 3 leukemia called leukemia
    out = module.CopyOutputs(labels=np.array([0, 1, 2, 3]), called=np.array([0, 0, 0, 3]),
                             flagged=np.array([False, False, True, False]), rows=np.array([0, 1]),
                             p_benign=np.array([[0.9999, 0.9999], [0.9999, 0.9999], [0.9999, 0.9999],
                                                [0.9999, 0.95]]))  # x2 doubts image 1
    assert module.with_check(None, views, out, 0) == {"flagged": 0.25, "leukemia_called_benign_not_flagged": 1}
    x2 = BenignCheck((View(scale=2.0),), 0.99)
    assert module.with_check(x2, views, out, 0) == {"flagged": 0.5, "leukemia_called_benign_not_flagged": 0}
    x05 = BenignCheck((View(scale=0.5),), 0.99)
    assert module.with_check(x05, views, out, 0)["leukemia_called_benign_not_flagged"] == 1
    strict = BenignCheck((View(scale=0.5),), 0.99995)  # doubts both: flags the Benign image too
    assert module.with_check(strict, views, out, 0) == {"flagged": 0.75, "leukemia_called_benign_not_flagged": 0}


def test_the_choice_keeps_the_flag_cap_then_fewest_misses_then_fewest_flags() -> None:
    module = fit_benign_check()

    def row(flagged: float, missed: int = 0) -> dict:
        return {"flagged": flagged, "leukemia_called_benign_not_flagged": missed}

    checks = {module.NO_CHECK: None, "cheap": BenignCheck((View(scale=2.0),), 0.9),
              "costly": BenignCheck((View(scale=2.0),), 0.999), "too costly": BenignCheck((View(scale=2.0),), 0.9999),
              "two views": BenignCheck((View(scale=2.0), View(scale=0.5)), 0.999)}
    table = {module.NO_CHECK: {"none": row(0.10), "x2": row(0.5, 3)},
             "cheap": {"none": row(0.11), "x2": row(0.5, 1)},
             "costly": {"none": row(0.14), "x2": row(0.6, 0)},
             "too costly": {"none": row(0.16), "x2": row(0.6, 0)},  # more than 5 points above 0.10
             "two views": {"none": row(0.14), "x2": row(0.6, 0)}}
    assert module.choose(table, checks) == "costly"  # fewest misses in the cap; fewer views than "two views"
    assert module.choose(table, checks, max_flag_rise=0.02) == "cheap"
    assert module.choose(table, checks, max_flag_rise=0.0) == module.NO_CHECK


def test_the_card_section_names_the_views_the_rule_and_the_val_numbers() -> None:
    module = fit_benign_check()
    check = BenignCheck((View(scale=2.0),), 0.999)
    fit = {"command": "scripts/fit_benign_check.py", "date": "today", "data": {"val_images": 280},
           "per_copy": {"magnification x2": {"before": {"flagged": 0.9, "leukemia_called_benign_not_flagged": 1},
                                             "after": {"flagged": 0.95, "leukemia_called_benign_not_flagged": 0}}}}
    text = module.section(check, fit)
    assert text.startswith("## Benign view check") and "resized x2;" in text and "below 0.999" in text
    assert module.RULE in text and "| magnification x2 | 0.900 -> 0.950 | 1 -> 0 |" in text


def test_a_recorded_fit_is_read_back_by_the_predictor(tiny_package, tmp_path) -> None:
    import argparse
    import shutil

    from leukoscope.inference.package import verify_package
    from leukoscope.inference.predictor import load_predictor

    fit_benign_check()  # puts fit_realign on the path as the script does
    from fit_realign import record_fit

    package = shutil.copytree(tiny_package, tmp_path / "package")
    check = BenignCheck((View(scale=2.0),), 0.999)
    record_fit(package, argparse.Namespace(no_card=True), verify_package(package), "benign_check", check.to_dict(),
               "benign_check_fit", {"chosen": "views x2"})
    info = verify_package(package)
    assert info["benign_check_fit"] == {"chosen": "views x2"} and "confidence_threshold" in info["review"]
    assert load_predictor(package, threads=1).benign_check == check

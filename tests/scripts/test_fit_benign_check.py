"""scripts/fit_benign_check.py: it runs the library's rule (tests/inference/test_benign_check_fit.py), its card
section, and a recorded fit read back."""

from __future__ import annotations

from leukoscope.review.benign_check import BenignCheck
from leukoscope.review.realign import View
from tests.scripts.test_refit_review import script


def fit_benign_check():
    return script("fit_benign_check")


def test_the_script_runs_the_library_rule() -> None:
    from leukoscope.inference import benign_check_fit

    module = fit_benign_check()
    assert module.RULE == benign_check_fit.RULE and module.fit_benign_check is benign_check_fit.fit_benign_check
    assert "leukoscope.inference.benign_check_fit.RULE" in module.__doc__


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

"""scripts/fit_realign.py: the candidates its rule compares, how it scores one, and its card section."""

from __future__ import annotations

import numpy as np

from leukoscope.review.realign import RealignRule, View
from tests.scripts.test_refit_review import script


def fit_realign():
    return script("fit_realign")


def test_candidates_are_the_written_grid_with_one_empty_candidate() -> None:
    module = fit_realign()
    names = [name for name, _ in module.candidates()]
    assert names[0] == "no realignment" and len(names) == len(set(names))
    assert len(names) == 1 + (len(module.CANDIDATE_SCALES) * len(module.CANDIDATE_HUES) - 1) * len(module.MARGINS)
    rules = [rule for _, rule in module.candidates() if rule is not None]
    assert max(len(r.views) for r in rules) == 8 and {r.margin for r in rules} == set(module.MARGINS)


def test_a_candidate_changes_only_flagged_images_whose_view_scores_lower() -> None:
    module = fit_realign()
    views = [View(scale=0.5), View(hue=10.0)]
    labels = np.array([0, 1, 1])
    given = (np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]]), np.array([10.0, 90.0, 90.0]))
    probs = np.array([[[0.1, 0.9], [0.1, 0.9], [0.6, 0.4]],  # x0.5: right for images 1, wrong for 2
                      [[0.1, 0.9], [0.6, 0.4], [0.2, 0.8]]])  # hue +10: right for image 2
    scores = np.array([[1.0, 50.0, 80.0],
                       [1.0, 60.0, 70.0]])
    assert module.accuracy_with(None, views, given, (probs, scores), labels, threshold=50.0) == 1 / 3
    both = RealignRule(tuple(views))
    # image 0 is not flagged (10 <= 50) and keeps its call although both views score lower
    assert module.accuracy_with(both, views, given, (probs, scores), labels, threshold=50.0) == 1.0
    assert module.accuracy_with(RealignRule((views[0],)), views, given, (probs, scores), labels, 50.0) == 2 / 3
    assert module.accuracy_with(RealignRule(tuple(views), 25.0), views, given, (probs, scores), labels, 50.0) == 2 / 3


def test_the_card_section_names_the_views_the_rule_and_the_val_numbers() -> None:
    module = fit_realign()
    rule = RealignRule((View(scale=2.0), View(hue=-10.0)), margin=5.0)
    row = {"accuracy": 0.9, "flagged": 0.5, "leukemia_called_benign_not_flagged": 0}
    fit = {"command": "scripts/fit_realign.py", "date": "today", "data": {"val_images": 280},
           "check": {"magnification x2": {"before": row, "after": {**row, "accuracy": 0.95}}}}
    text = module.section(rule, fit)
    assert text.startswith("## Realignment") and "resized x2" in text and "-10 degrees" in text
    assert "by more than 5" in text and module.RULE in text and "| magnification x2 | 0.900 -> 0.950 |" in text

"""benchmarks/occlusion.py: the painted variants of a field and the plain-words reading of the figures."""

from __future__ import annotations

import numpy as np

from benchmarks import occlusion
from tests.segmentation.synthetic import field


def test_cells_are_painted_and_the_control_paints_only_background() -> None:
    rgb, cell = field([(60, 60, 18)])
    (plain, no_cells, control, corner), share = occlusion.variants(rgb)
    assert np.array_equal(plain, rgb) and 0.01 < share < 0.05
    changed = np.any(no_cells != rgb, axis=2)
    assert changed[cell].mean() > 0.9  # the cell is gone
    moved = np.any(control != rgb, axis=2)
    assert not (moved & cell).any() and moved.sum() > 0.5 * cell.sum()  # as much background, none of the cell
    painted = np.any(corner != rgb, axis=2)
    assert not painted[:150, :].any() and not painted[:, :150].any()  # only the bottom-right corner


def _outcome(without_cells: float, corner: float) -> dict:
    classes = ["Benign", "Early", "Pre", "Pro"]

    def figures(recall: float, accuracy: float) -> dict:
        return {"accuracy": accuracy, "recall": {"Benign": 1.0, **{c: recall for c in classes[1:]}},
                "leukemia_called_benign": 0}

    return {"classes": classes, "n": 8, "cells_share_median": 0.07, "figures": {
        "as is": figures(1.0, 1.0), "white cells painted out": figures(without_cells, 0.9),
        "control: as many background pixels painted out": figures(1.0, 1.0),
        "scale-bar corner painted out": figures(1.0, corner)}}


def test_findings_say_whether_the_calls_need_the_cells_and_the_scale_bar() -> None:
    slide = occlusion.findings(_outcome(without_cells=0.97, corner=1.0))
    assert "reads the slide" in slide[0] and "do not depend on the scale bar" in slide[1]
    cells = occlusion.findings(_outcome(without_cells=0.3, corner=0.8))
    assert "depend on the white cells" in cells[0] and "depend on the scale bar" in cells[1]
    assert "| white cells painted out | 90.00% |" in occlusion.render(_outcome(0.3, 0.8), "cmd", "m")

"""benchmarks/cell_model.py: the written decision rule, the per-field counts from cells, the section."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import cell_model
from benchmarks.shift import Row
from leukoscope.data.shifts import NAMED
from tests.helpers.images import png_bytes
from tests.helpers.modelfixtures import shared_tiny_package
from tests.segmentation.synthetic import field


def _row(name: str, kind: str, accuracy: float, unflagged: int, flagged: float = 0.05) -> Row:
    return Row(name, kind, 100, accuracy, flagged, 60, unflagged + 1, 1, unflagged, 40, 0)


def _family(accuracy: float, unflagged: list[int], flagged: float = 0.05) -> list[Row]:
    kinds = ["none"] + ["named"] * (len(unflagged) - 2) + ["lab B"]
    return [_row(f"r{i}", kind, accuracy, u, flagged) for i, (kind, u) in enumerate(zip(kinds, unflagged, strict=True))]


def test_the_cell_model_wins_only_when_all_three_conditions_hold() -> None:
    field_rows = _family(0.99, [0, 2, 1, 0])
    assert cell_model.decide(field_rows, _family(0.99, [0, 0, 1, 0]))[0] == "cell"
    assert cell_model.decide(field_rows, _family(0.985, [0, 0, 0, 0]))[0] == "field"  # less accurate
    assert cell_model.decide(field_rows, _family(0.995, [0, 2, 1, 0]))[0] == "field"  # not fewer misses
    assert cell_model.decide(field_rows, _family(0.995, [0, 0, 0, 0], flagged=0.2))[0] == "field"  # flags too much
    choice, checks = cell_model.decide(field_rows, _family(0.995, [0, 0, 0, 0], flagged=0.15))
    assert choice == "cell" and all(held for _, held, _ in checks)
    assert cell_model.totals(field_rows) == {"A": 0.99, "U": 3, "F": 0.05}


def test_plans_are_the_shift_family_then_lab_b() -> None:
    plans = cell_model.plans(5, composites=2)
    assert [kind for _, kind, _ in plans] == ["none"] + ["named"] * len(NAMED) + ["composite"] * 2 + ["lab B"]
    assert all(len(shifts) == 5 for _, _, shifts in plans)


def test_render_states_the_outcome_and_the_disclaimer() -> None:
    result = {"field": _family(0.99, [0, 1, 0, 0]), "cell": _family(0.9, [0, 0, 0, 0])}
    text = cell_model.render(result, "python -m benchmarks.cell_model", "cells-pkg", {})
    assert "field model stays" in text and "Research software, not a medical device." in text
    assert "**1 / 0**" in text


def test_score_cells_counts_fields_called_from_their_cells(tmp_path_factory: pytest.TempPathFactory) -> None:
    from leukoscope.inference.predictor import load_predictor

    predictor = load_predictor(shared_tiny_package(tmp_path_factory))
    items = [("a.png", png_bytes(field(((60, 60, 14), (150, 150, 13)))[0])), ("b.png", png_bytes(field(())[0]))]
    row = cell_model.score_cells(predictor, "none", "none", items, ["Pre-B", "Benign"])
    assert (row.n, row.n_leukemia, row.n_benign) == (2, 1, 1)
    assert row.flagged >= 0.5  # the field without a cell has no class and counts as flagged
    assert row.accuracy <= 0.5  # ... and as wrong
    assert Path(cell_model.__file__).read_text().count("DECISION RULE") == 1


def test_run_all_runs_the_cell_model_step_when_asked(tmp_path: Path) -> None:
    import argparse

    from benchmarks import run_all

    args = argparse.Namespace(only=["cell-model"], full=False, no_wait=True, results=tmp_path / "R.md")
    (step,) = run_all.plan(args, tmp_path)
    assert step.name == "cell-model" and step.command[2] == "benchmarks.cell_model"
    assert step.command[step.command.index("--cell-model") + 1] == run_all.CELL_PACKAGE

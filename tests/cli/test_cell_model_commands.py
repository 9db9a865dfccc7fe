"""Commands that read whole fields refuse a cell model, and `leukoscope export` makes a cell package of a cell run
(review rules fitted on crops, `unit: cells`) instead of a field package calibrated on whole fields."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers.cli import one_error_line, run
from tests.training.cellfixtures import shared_cell_package, shared_cell_run


def test_export_of_a_cell_run_writes_a_cell_package(capsys, tmp_path_factory, tmp_path: Path) -> None:
    cell_run = shared_cell_run(tmp_path_factory)
    code, _, err = run(capsys, "export", cell_run, "--out", tmp_path / "pkg", "-q")
    assert code == 0, err
    assert json.loads((tmp_path / "pkg" / "model.json").read_text())["unit"] == "cells"
    code, _, err = run(capsys, "export", cell_run, "--out", tmp_path / "pkg8", "--int8")
    assert code == 2 and "cell run" in one_error_line(err)


def test_field_commands_refuse_a_cell_model(capsys, tmp_path_factory, tmp_path: Path) -> None:
    package = shared_cell_package(tmp_path_factory)
    for args in (("evaluate", package, tmp_path, "--out", tmp_path / "e"),
                 ("serve", "--model", package, "--db", tmp_path / "s.db", "--port", "9"),
                 ("clinics", "set-model", "default", package, "--db", tmp_path / "c.db")):
        code, _, err = run(capsys, *args)
        assert code == 2 and "cell model" in one_error_line(err), args
    assert not (tmp_path / "s.db").exists()  # refused before the database is made

"""Training per cell (leukoscope.training.cells) and its config option, on a tiny synthetic dataset."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from leukoscope.errors import ConfigError
from leukoscope.models.checkpoint import load_trained
from leukoscope.training.cells import fit_cells
from leukoscope.training.config import TrainConfig
from tests.training.cellfixtures import cell_config, shared_cell_run


def test_unit_is_checked_and_cells_need_a_head_only_recipe() -> None:
    assert TrainConfig().unit == "fields"
    with pytest.raises(ConfigError, match="unit must be one of fields, cells"):
        TrainConfig(unit="pixels")
    with pytest.raises(ConfigError, match="soft_targets"):
        TrainConfig(unit="cells", soft_targets="a.csv")
    with pytest.raises(ConfigError, match="cells_per_field"):
        TrainConfig(cells_per_field=-1)
    assert TrainConfig(unit="cells", trainable="frozen", cells_per_field="8").cells_per_field == 8


@pytest.mark.slow  # trains a tiny cell run (~10-40 s on 2 cores)
def test_a_cell_run_folder_holds_what_a_run_needs_and_its_crops(tmp_path_factory) -> None:
    run = shared_cell_run(tmp_path_factory)
    for name in ("config.yaml", "manifest.csv", "split.csv", "env.json", "metrics.csv", "best.pt", "last.pt",
                 "summary.json", "cells.csv"):
        assert (run / name).is_file(), name
    assert "unit: cells" in (run / "config.yaml").read_text()
    rows = list(csv.DictReader((run / "cells.csv").open()))
    assert {r["part"] for r in rows} == {"train", "val"}
    split = {r["path"]: r for r in csv.DictReader((run / "split.csv").open())}
    assert all(split[r["path"]]["part"] == r["part"] and split[r["path"]]["label"] == r["label"] for r in rows)
    loaded = load_trained(run)
    assert loaded.preprocess.input_size == 32 and loaded.meta["unit"] == "cells"
    assert "test" not in (run / "metrics.csv").read_text().splitlines()[0]


@pytest.mark.slow
def test_a_cell_run_cannot_be_resumed_or_overwritten(tmp_path_factory, tmp_path: Path) -> None:
    run = shared_cell_run(tmp_path_factory)
    config = cell_config(run.parent.parent / "data", run.parent, name=run.name)
    with pytest.raises(ConfigError, match="already holds a run"):
        fit_cells(config, quiet=True)
    with pytest.raises(ConfigError, match="cannot be resumed"):
        fit_cells(config, resume=True, quiet=True)
    with pytest.raises(ConfigError, match="unit=cells"):
        fit_cells(cell_config(tmp_path, tmp_path, unit="fields"), quiet=True)
    with pytest.raises(ConfigError, match="trainable=head"):
        fit_cells(cell_config(tmp_path, tmp_path, trainable="all"), quiet=True)

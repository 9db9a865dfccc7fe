"""`leukoscope train --unit cells`, driven through `main` as a user would."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.cli import run
from tests.training.cellfixtures import make_field_dataset

pytestmark = pytest.mark.usefixtures("wide_console")

TINY = ("--backbone", "test_efficientnet", "--weights", "none", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
        "--set", "input_size=32", "--set", "frozen_views=1", "--set", "workers=1", "--set", "amp=false",
        "--set", "near_duplicate_distance=-1", "--set", "val_size=0.25", "--set", "test_size=0.25")


def test_a_cell_recipe_refuses_training_the_whole_network(capsys, tmp_path: Path) -> None:
    data = make_field_dataset(tmp_path / "data", per_class=1)
    code, _, err = run(capsys, "train", data, "--unit", "cells", "--set", "trainable=all", "--out-dir", tmp_path)
    assert code == 2 and "trainable=head" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "train", data, "--unit", "pixels", "--out-dir", tmp_path)
    assert code == 2 and "unit must be one of fields, cells" in err


@pytest.mark.slow
def test_train_unit_cells_writes_a_cell_run(capsys, tmp_path: Path) -> None:
    data = make_field_dataset(tmp_path / "data")
    code, out, err = run(capsys, "train", data, "--unit", "cells", "--out-dir", tmp_path / "runs", "--name", "c", "-q",
                         *TINY)
    assert code == 0, err
    run_dir = tmp_path / "runs" / "c"
    assert "cell model" in out and (run_dir / "best.pt").is_file() and (run_dir / "cells.csv").is_file()
    config = (run_dir / "config.yaml").read_text()
    assert "unit: cells" in config and "trainable: head" in config and "warmup_epochs: 0" in config

"""A cell run exported as a cell package (leukoscope.inference.cell_export): review rules fitted on crops."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from leukoscope.errors import ModelError
from leukoscope.inference.cell_export import export_cell_run
from leukoscope.inference.cells import predict_cells
from leukoscope.inference.package import unit_of
from leukoscope.inference.predictor import load_predictor
from tests.helpers.images import png_bytes
from tests.helpers.modelfixtures import shared_tiny_run
from tests.segmentation.synthetic import field
from tests.training.cellfixtures import shared_cell_package


def test_a_cell_package_says_cells_and_fits_its_rules_on_crops(tmp_path_factory) -> None:
    package = shared_cell_package(tmp_path_factory)
    info = json.loads((package / "model.json").read_text())
    assert info["unit"] == "cells" and info["preprocess"]["input_size"] == 32
    assert info["cells"]["crop_size"] == 64 and "label" in info["cells"]["labels"]
    assert info["cells"]["train_crops"] > 0 and info["metrics"]["val"]["unit"] == "cell crops"
    predictor = load_predictor(package)
    assert unit_of(predictor.info) == "cells" and predictor.ood is not None
    result = predict_cells(predictor, png_bytes(field(((80, 80, 14), (150, 150, 12)))[0]))
    assert result.status == "ok" and len(result.cells) == 2
    assert all(c.prediction.ood_score is not None for c in result.cells)


def test_a_field_run_is_refused(tmp_path_factory, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not a cell run"):
        export_cell_run(shared_tiny_run(tmp_path_factory), tmp_path / "package")

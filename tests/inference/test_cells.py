"""Cells as the unit of a call (leukoscope.inference.cells, .cell_rows) on a tiny field package."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from leukoscope.inference.cell_rows import flat_rows, nested_document, render_csv, render_json, sample_row
from leukoscope.inference.cells import (
    ERROR,
    NO_CELL,
    UNUSABLE,
    CellResult,
    FieldResult,
    crop_inputs,
    predict_cells,
    predict_cells_bytes,
    predict_cells_paths,
    sample_of,
)
from leukoscope.inference.package import unit_of
from leukoscope.inference.prediction import Prediction
from leukoscope.inference.predictor import load_predictor
from leukoscope.models.preprocessing import Preprocess
from tests.helpers.images import png_bytes
from tests.helpers.modelfixtures import shared_tiny_package
from tests.segmentation.synthetic import field

CLASSES = ("Benign", "Early Pre-B", "Pre-B", "Pro-B")
THREE = ((60, 60, 14), (150, 70, 13), (110, 160, 15))


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory):
    return load_predictor(shared_tiny_package(tmp_path_factory))


def test_unit_of_reads_model_json_and_defaults_to_fields() -> None:
    assert unit_of({"unit": "cells"}) == "cells"
    assert unit_of({}) == "fields" and unit_of({"unit": "other"}) == "fields"


def test_crop_inputs_resize_to_the_model_input() -> None:
    crops = np.zeros((2, 64, 64, 3), np.uint8)
    assert crop_inputs(crops, Preprocess(32, (0.5,) * 3, (0.5,) * 3)).shape == (2, 32, 32, 3)
    assert crop_inputs([], Preprocess(32, (0.5,) * 3, (0.5,) * 3)).shape == (0, 32, 32, 3)


def test_every_cell_gets_a_class_probabilities_and_a_flag_and_the_field_a_call(predictor) -> None:
    result = predict_cells(predictor, png_bytes(field(THREE)[0]), source="f.png")
    assert result.status == "ok" and len(result.cells) == 3
    for cell in result.cells:
        p = cell.prediction
        assert p.label in CLASSES and p.status == "ok"
        assert abs(sum(p.probabilities.values()) - 1) < 1e-6
        assert isinstance(p.review, bool) and p.source == f"f.png#cell{cell.cell_id}"
    assert result.call is not None and result.call.usable == 3
    assert sum(result.counts(CLASSES).values()) == 3
    leukemic = [c for c in result.cells if c.prediction.label != "Benign"]
    assert result.call.call == ("leukemia" if leukemic else "benign")


def test_boxes_are_in_the_files_pixels(predictor) -> None:
    small = predict_cells(predictor, png_bytes(field(((112, 112, 15),))[0]))
    big_rgb = np.asarray(field(((112, 112, 15),))[0]).repeat(2, axis=0).repeat(2, axis=1)
    big = predict_cells(predictor, png_bytes(big_rgb))
    assert (big.width, big.height) == (448, 448)
    (x0, y0, x1, y1), (bx0, by0, bx1, by1) = small.cells[0].bbox, big.cells[0].bbox
    assert abs(bx0 - 2 * x0) <= 2 and abs(bx1 - 2 * x1) <= 2 and abs(by0 - 2 * y0) <= 2 and abs(by1 - 2 * y1) <= 2


def test_bad_fields_get_a_status_and_a_reason_and_no_call(predictor, tmp_path: Path) -> None:
    rgb = field(THREE)[0]
    grey = np.repeat(rgb.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
    cases = {
        "empty": (png_bytes(field(())[0]), NO_CELL, "no white cell"),
        "grey": (png_bytes(grey), UNUSABLE, "grayscale"),
        "white": (png_bytes(np.full((224, 224, 3), 253, np.uint8)), UNUSABLE, "overexposed"),
        "tiny": (png_bytes(rgb[:4, :4]), UNUSABLE, "too small"),
        "broken": (b"not an image", ERROR, "image"),
    }
    for name, (data, status, words) in cases.items():
        result = predict_cells(predictor, data, source=name)
        assert (result.status, result.call, result.cells) == (status, None, []), name
        assert words in result.reason, (name, result.reason)


def test_a_huge_field_is_reduced_first(predictor) -> None:
    rgb = field(((112, 112, 15),))[0].repeat(16, axis=0).repeat(16, axis=1)  # 3584 x 3584
    result = predict_cells(predictor, png_bytes(rgb))
    assert result.status == "ok" and (result.width, result.height) == (3584, 3584)
    assert len(result.cells) == 1 and result.cells[0].bbox[2] > 1500


def test_paths_and_bytes_give_the_same_results_in_order(predictor, tmp_path: Path) -> None:
    names = []
    for i, cells in enumerate((THREE, (), ((112, 112, 15),))):
        path = tmp_path / f"f{i}.png"
        path.write_bytes(png_bytes(field(cells, seed=i)[0]))
        names.append(path)
    names.append(tmp_path / "missing.png")
    by_path = list(predict_cells_paths(predictor, names, fields_per_batch=2))
    assert [r.status for r in by_path] == ["ok", NO_CELL, "ok", ERROR]
    by_bytes = predict_cells_bytes(predictor, [(str(p), p.read_bytes()) for p in names[:3]])
    for a, b in zip(by_path, by_bytes, strict=False):
        assert a.status == b.status and len(a.cells) == len(b.cells)
        for x, y in zip(a.cells, b.cells, strict=True):
            assert x.prediction.label == y.prediction.label
            assert x.prediction.probabilities == pytest.approx(y.prediction.probabilities, abs=1e-5)


def _cell(label: str, review: bool = False, cell_id: int = 1, sha: str = "f") -> CellResult:
    probabilities = {c: (0.97 if c == label else 0.01) for c in CLASSES}
    prediction = Prediction(f"x#cell{cell_id}", f"{sha}:{cell_id}", label, probabilities, 0.97, review, [], None, 64, 64)
    return CellResult(cell_id, (0, 0, 1, 1), 100, 0.5, prediction)


def _field(source: str, labels: list[str], status: str = "ok") -> FieldResult:
    cells = [_cell(label, cell_id=i + 1, sha=source) for i, label in enumerate(labels)]
    result = FieldResult(source, source, status, cells=cells)
    if status == "ok":
        result.call = sample_of([result], CLASSES)
    return result


def test_one_leukemic_cell_makes_the_sample_leukemic_and_no_cell_fields_stay_out() -> None:
    benign = _field("a", ["Benign"] * 5)
    mixed = _field("b", ["Benign"] * 7 + ["Pro-B"])
    empty = FieldResult("c", "c", NO_CELL, "no white cell found in the field")
    assert sample_of([benign, empty], CLASSES).call == "benign"
    assert not sample_of([benign, empty], CLASSES).review  # a field without cells is no reason to review
    call = sample_of([benign, mixed, empty], CLASSES)
    assert (call.call, call.label, call.usable, call.leukemic_images) == ("leukemia", "Pro-B", 13, 1)
    assert sample_of([benign, benign], CLASSES).usable == 5  # the same field twice counts once


def test_unusable_and_failed_fields_flag_the_sample() -> None:
    benign = _field("a", ["Benign"] * 3)
    grey = FieldResult("g", "g", UNUSABLE, "grayscale image")
    broken = FieldResult("x", "", ERROR, "not an image")
    call = sample_of([benign, grey, broken], CLASSES)
    assert call.call == "benign" and call.review
    assert {"unusable_images", "failed_images"} <= set(call.review_codes)


def test_rows_count_cells_per_class_per_field_and_per_sample() -> None:
    fields = [_field("p1/a.png", ["Benign", "Benign", "Pre-B"]), _field("p2/b.png", ["Benign"]),
              FieldResult("p2/c.png", "c", NO_CELL, "no white cell found in the field")]
    rows = flat_rows(fields, CLASSES, by_folder=True)
    assert [r["level"] for r in rows] == ["sample", "field", "cell", "cell", "cell", "sample", "field", "cell", "field"]
    assert (rows[0]["n_Benign"], rows[0]["n_Pre-B"], rows[0]["call"]) == (2, 1, "leukemia")
    assert (rows[5]["fields"], rows[5]["fields_no_cell"], rows[5]["n_Benign"], rows[5]["call"]) == (2, 1, 1, "benign")
    assert rows[-1]["status"] == NO_CELL and rows[-1]["headline"] == "no call"
    table = list(csv.DictReader(io.StringIO(render_csv(rows))))
    assert len(table) == 9 and table[2]["p_Pre-B"] == "0.01" and table[1]["n_Pre-B"] == "1"
    one = flat_rows(fields, CLASSES)
    assert [r["level"] for r in one].count("sample") == 1 and one[0]["n_Benign"] == 3
    document = json.loads(render_json(nested_document(fields, CLASSES, model_unit="fields", by_folder=True)))
    assert document["unit"] == "cells" and "medical device" in document["disclaimer"]
    assert len(document["samples"]) == 2 and len(document["samples"][0]["fields"][0]["cells"]) == 3
    assert document["samples"][0]["fields"][0]["review_codes"] == []
    assert sample_row("s", [], CLASSES)["status"] == "no call"

"""Cell crops of many fields with their field's labels (leukoscope.segmentation.crops)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leukoscope.segmentation.crops import choose_cells, field_crops
from leukoscope.segmentation.field import PARAMS
from tests.segmentation.synthetic import field

THREE = ((60, 60, 14), (150, 70, 13), (110, 160, 15))


def test_choose_cells_keeps_all_without_a_cap_and_a_seeded_sorted_subset_with_one() -> None:
    assert choose_cells(5, 0, seed=0, index=3) == [0, 1, 2, 3, 4]
    assert choose_cells(3, 8, seed=0, index=3) == [0, 1, 2]
    chosen = choose_cells(30, 4, seed=1, index=7)
    assert len(chosen) == 4 and chosen == sorted(chosen) and len(set(chosen)) == 4
    assert chosen == choose_cells(30, 4, seed=1, index=7)
    assert any(choose_cells(30, 4, seed=s, index=7) != chosen for s in range(2, 6))


def _save(folder: Path, name: str, rgb: np.ndarray) -> Path:
    path = folder / name
    Image.fromarray(rgb).save(path)
    return path


def test_field_crops_label_every_cell_with_its_field_and_skip_fields_without_cells(tmp_path: Path) -> None:
    three = _save(tmp_path, "three.png", field(THREE)[0])
    one = _save(tmp_path, "one.png", field(((112, 112, 15),), seed=1)[0])
    empty = _save(tmp_path, "empty.png", field(())[0])
    grey = _save(tmp_path, "grey.png", np.repeat(field(THREE)[0].mean(axis=2, keepdims=True).astype(np.uint8), 3, 2))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    crops = field_crops([three, one, empty, grey, broken], [2, 0, 1, 1, 3])
    assert len(crops) == 4
    assert crops.crops.shape == (4, PARAMS.crop_size, PARAMS.crop_size, 3) and crops.crops.dtype == np.uint8
    assert crops.labels.tolist() == [2, 2, 2, 0]
    assert crops.fields.tolist() == [0, 0, 0, 1]
    assert sorted(crops.cell_ids[:3].tolist()) == [1, 2, 3]
    assert crops.statuses == ["ok", "ok", "no cell found", "grayscale", "unreadable"]


def test_field_crops_cap_per_field_and_refuse_mismatched_labels(tmp_path: Path) -> None:
    three = _save(tmp_path, "three.png", field(THREE)[0])
    assert len(field_crops([three], [1], per_field=2, seed=0)) == 2
    with pytest.raises(ValueError, match="labels"):
        field_crops([three], [1, 2])

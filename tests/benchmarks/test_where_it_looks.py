"""Smoke tests of benchmarks/where_it_looks.py: the rows and examples it picks, and its core (predict, Grad-CAM,
segment, summarise, table, figure) on three real test images with the session's tiny package, so the hour-long
run does not discover a broken script at its end."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from benchmarks import where_it_looks
from benchmarks.common import DATA, SPLIT


def test_limit_takes_the_first_images_of_each_class_and_examples_are_fixed(tmp_path: Path) -> None:
    split = tmp_path / "split.csv"
    split.write_text("path,label,part\n" + "".join(
        f"{label}/{i}.jpg,{label},{'test' if i % 2 else 'train'}\n" for label in ("A", "B") for i in range(6)),
        encoding="utf-8")
    rows = where_it_looks.test_records(split, limit=2)
    assert [r["path"] for r in rows] == ["A/1.jpg", "A/3.jpg", "B/1.jpg", "B/3.jpg"]
    assert len(where_it_looks.test_records(split)) == 6
    assert where_it_looks.example_indices(["A", "A", "A", "B", "B"], per_class=2) == {0, 1, 3, 4}


@pytest.mark.skipif(not DATA.is_dir() or not SPLIT.is_file(), reason="needs ../shared/data/ALL and bundle/split.csv")
def test_core_on_three_test_images(tiny: dict[str, Path], tmp_path: Path) -> None:
    from leukoscope.inference.predictor import load_predictor

    predictor = load_predictor(tiny["package"], threads=1)
    records = where_it_looks.test_records(limit=1)[:3]  # Benign, Early Pre-B, Pre-B
    outcome = where_it_looks.run(predictor, records, DATA, batch_size=2, log=lambda _: None)
    summary = outcome["summary"]
    assert len(outcome["results"]) == 3 and summary["groups"]["all images"]["n_images"] == 3
    assert [summary["groups"][r["label"]]["n_images"] for r in records] == [1, 1, 1]
    measured = [r for r in outcome["results"] if r.status == "ok"]
    assert measured and all(0.0 <= r.energy_inside <= 1.0 and r.hit in (True, False) for r in measured)
    assert sorted(outcome["examples"]) == [0, 1, 2]
    figure = where_it_looks.figure(outcome["examples"], outcome["labels"], outcome["predicted"], tmp_path / "f.png")
    assert Image.open(figure).format == "PNG"
    body = where_it_looks.render(outcome, "python -m benchmarks.where_it_looks", "tiny", figure)
    assert "## Where the model looks (tiny, test part)" in body and where_it_looks.NOTICE in body
    assert "| correctly classified leukemia |" in body and "Target (Grad-CAM peak inside a white cell" in body
    assert "most frequent peak block" in body and "peak inside by chance" in body
    rows = tmp_path / "rows.csv"
    where_it_looks.write_rows(rows, outcome)
    assert len(rows.read_text(encoding="utf-8").splitlines()) == 4

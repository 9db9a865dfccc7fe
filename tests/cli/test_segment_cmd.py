"""`leukoscope segment`, driven through `main` as a user would: outputs, --overwrite, bad files."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.cli import run
from tests.segmentation.synthetic import field

pytestmark = pytest.mark.usefixtures("wide_console")


def _images(folder: Path) -> Path:
    """Two fields with cells (one in a subfolder), one without, one corrupt file, one text file."""
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(field([(112, 112, 18)])[0]).save(folder / "one.png")
    Image.fromarray(field([(95, 112, 18), (127, 112, 18)], seed=1)[0]).save(folder / "sub" / "two.png")
    Image.fromarray(field([], seed=2)[0]).save(folder / "blank.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("not an image")  # not an image suffix: not collected
    return folder


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "cells.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_segment_writes_masks_crops_and_csv(tmp_path: Path, capsys) -> None:
    images = _images(tmp_path / "in")
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "segment", images, "--out", out, "--quiet")
    assert code == 0, err
    assert "4 images" in stdout and "3 cells" in stdout and "not a medical device" in stdout
    assert "broken.jpg" in err and len([line for line in err.splitlines() if "broken.jpg" in line]) == 1
    rows = _rows(out)
    by_image = {}
    for row in rows:
        by_image.setdefault(Path(row["image"]).name, []).append(row)
    assert [r["status"] for r in by_image["one.png"]] == ["ok"]
    assert sorted(r["cell_id"] for r in by_image["two.png"]) == ["1", "2"]
    assert by_image["blank.png"][0]["status"] == "no cell found" and by_image["blank.png"][0]["cell_id"] == ""
    assert by_image["broken.jpg"][0]["status"] == "unreadable" and by_image["broken.jpg"][0]["reason"]
    one = by_image["one.png"][0]
    assert 0 < int(one["x0"]) < int(one["x1"]) <= 224 and int(one["area"]) > 500
    assert 0 < float(one["nucleus_fraction"]) <= 1
    mask = Image.open(out / one["mask"])
    assert mask.mode.startswith("I") and mask.size == (224, 224)
    labels = np.asarray(mask)
    assert labels.max() == 1 and (labels == 1).sum() == int(one["area"])
    two = np.asarray(Image.open(out / by_image["two.png"][0]["mask"]))
    assert set(np.unique(two).tolist()) == {0, 1, 2}
    assert (out / "masks" / "sub__two.png").is_file() and (out / "masks" / "blank.png").is_file()
    crop = Image.open(out / one["crop"])
    assert crop.size == (64, 64) and crop.mode == "RGB"
    assert sorted(p.name for p in (out / "crops" / "sub__two").iterdir()) == ["cell_001.png", "cell_002.png"]
    assert not list(out.rglob("*.tmp"))  # atomic writes leave no temporary files


def test_segment_refuses_existing_output_unless_overwrite(tmp_path: Path, capsys) -> None:
    images = _images(tmp_path / "in")
    out = tmp_path / "out"
    assert run(capsys, "segment", images / "one.png", "--out", out, "-q")[0] == 0
    code, _, err = run(capsys, "segment", images / "one.png", "--out", out, "-q")
    assert code == 2 and "already exists" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    (out / "keep.txt").write_text("mine")
    code, _, err = run(capsys, "segment", images / "sub" / "two.png", "--out", out, "--overwrite", "-q")
    assert code == 0, err
    assert [Path(r["image"]).name for r in _rows(out)] == ["two.png", "two.png"]
    assert not (out / "masks" / "one.png").exists() and (out / "keep.txt").read_text() == "mine"
    (tmp_path / "made-by-hand").mkdir()  # an existing folder is refused even when empty
    code, _, err = run(capsys, "segment", images / "one.png", "--out", tmp_path / "made-by-hand", "-q")
    assert code == 2 and "already exists" in err


def test_segment_fails_only_when_nothing_could_be_read(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"")
    (bad / "b.png").write_bytes(b"garbage")
    code, _, err = run(capsys, "segment", bad, "--out", tmp_path / "out", "-q")
    assert code == 1 and "none of the 2 files could be read" in err
    assert {r["status"] for r in _rows(tmp_path / "out")} == {"unreadable"}
    code, _, err = run(capsys, "segment", tmp_path / "empty-folder-missing", "--out", tmp_path / "out2", "-q")
    assert code == 1 and "could be read" in err  # a missing path is an unreadable row, not a crash
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "segment", tmp_path / "empty", "--out", tmp_path / "out3", "-q")
    assert code == 2 and "no images found" in err


def test_segment_reduces_a_huge_file_and_reports_its_scale(tmp_path: Path, capsys) -> None:
    huge = tmp_path / "huge.png"
    Image.fromarray(field([(112, 112, 18)])[0]).resize((4480, 4480), Image.Resampling.NEAREST).save(huge)
    code, _, err = run(capsys, "segment", huge, "--out", tmp_path / "out", "-q")
    assert code == 0, err
    (row,) = _rows(tmp_path / "out")
    assert row["status"] == "ok" and float(row["scale"]) == pytest.approx(20.0)
    assert Image.open(tmp_path / "out" / row["mask"]).size == (224, 224)


def test_segment_reports_grayscale_fields(tmp_path: Path, capsys) -> None:
    grey = tmp_path / "grey.png"
    Image.fromarray(field([(112, 112, 18)])[0]).convert("L").save(grey)
    code, _, err = run(capsys, "segment", grey, "--out", tmp_path / "out", "-q")
    assert code == 0, err
    assert "grayscale" in err
    (row,) = _rows(tmp_path / "out")
    assert row["status"] == "grayscale" and "colour" in row["reason"]


def test_segment_a_file_name_that_is_not_utf8(tmp_path: Path, capsys) -> None:
    (tmp_path / "in").mkdir()
    try:
        Image.fromarray(field([(112, 112, 18)])[0]).save(bytes(tmp_path / "in") + b"/smear-\xff.png", format="PNG")
    except OSError:
        pytest.skip("this file system refuses file names that are not UTF-8")
    code, _, err = run(capsys, "segment", tmp_path / "in", "--out", tmp_path / "out", "--quiet")
    assert code == 0, err  # cells.csv used to fail after the masks and crops were written
    assert b"smear-\xff.png" in (tmp_path / "out" / "cells.csv").read_bytes()


def test_an_empty_image_argument_is_refused(capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`leukoscope segment "$IMAGES" ...` with $IMAGES unset must not segment the current folder."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "segment", "", "--out", tmp_path / "out")
    assert code == 2 and "an image argument is an empty path" in err
    assert not (tmp_path / "out").exists()

"""`leukoscope predict --cells`, driven through `main` as a user would."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.cli import run
from tests.helpers.modelfixtures import shared_tiny_package
from tests.segmentation.synthetic import field

pytestmark = pytest.mark.usefixtures("wide_console")


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_tiny_package(tmp_path_factory)


@pytest.fixture(scope="module")
def smears(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """p1/: two fields with cells; p2/: one field with cells, one without, a grayscale one, a broken file."""
    root = tmp_path_factory.mktemp("cellsmears")
    (root / "p1").mkdir()
    (root / "p2").mkdir()
    Image.fromarray(field(((60, 60, 14), (150, 150, 13)))[0]).save(root / "p1" / "a.png")
    Image.fromarray(field(((110, 110, 15),), seed=2)[0]).save(root / "p1" / "b.png")
    Image.fromarray(field(((90, 140, 14),), seed=3)[0]).save(root / "p2" / "c.png")
    Image.fromarray(field(())[0]).save(root / "p2" / "empty.png")
    grey = field(((60, 60, 14),))[0].mean(axis=2).astype(np.uint8)
    Image.fromarray(grey).convert("RGB").save(root / "p2" / "grey.png")
    (root / "p2" / "broken.png").write_bytes(b"\x89PNG broken")
    return root


def test_cells_csv_has_sample_field_and_cell_rows_with_counts(capsys, package: Path, smears: Path) -> None:
    code, out, err = run(capsys, "predict", smears, "--cells", "-m", package, "--format", "csv", "--group-by", "folder")
    assert code == 1  # the broken file
    assert err.count("broken.png") == 1 and len(err.strip().splitlines()) == 2
    rows = list(csv.DictReader(io.StringIO(out)))
    samples = [r for r in rows if r["level"] == "sample"]
    fields = {Path(r["path"]).name: r for r in rows if r["level"] == "field"}
    cells = [r for r in rows if r["level"] == "cell"]
    assert [Path(s["path"]).name for s in samples] == ["p1", "p2"]
    assert (fields["a.png"]["status"], fields["a.png"]["cells"]) == ("ok", "2")
    assert (fields["empty.png"]["status"], fields["empty.png"]["label"]) == ("no cell found", "")
    assert fields["grey.png"]["status"] == "unusable" and "grayscale" in fields["grey.png"]["reason"]
    assert fields["broken.png"]["status"] == "error"
    assert len(cells) == 4 and all(c["label"] and c["p_Benign"] for c in cells)
    classes = ("Benign", "Early Pre-B", "Pre-B", "Pro-B")
    assert sum(int(samples[0][f"n_{c}"]) for c in classes) == 3 and samples[0]["cells"] == "3"
    assert samples[1]["fields_no_cell"] == "1" and samples[1]["fields_unusable"] == "1" and samples[1]["fields_failed"] == "1"
    assert samples[1]["review"] == "True"  # an unusable and a failed field: the sample is to review
    for name in ("a.png", "b.png"):
        assert sum(int(fields[name][f"n_{c}"]) for c in classes) == int(fields[name]["cells"])


def test_cells_json_nests_cells_in_fields_in_one_sample(capsys, package: Path, smears: Path, tmp_path: Path) -> None:
    out_file = tmp_path / "cells.json"
    code, out, _ = run(capsys, "predict", smears / "p1", "--cells", "-m", package, "-o", out_file)
    assert code == 0 and "2 field(s), 3 cell(s)" in out and "medical device" in out
    document = json.loads(out_file.read_text())
    assert document["model_unit"] == "fields" and len(document["samples"]) == 1
    sample = document["samples"][0]
    assert sample["path"] == "all images" and sample["call"] in ("leukemia", "benign")
    assert [len(f["cells"]) for f in sample["fields"]] == [2, 1]
    assert isinstance(sample["fields"][0]["cells"][0]["review_codes"], list)


def test_cells_table_and_refusals(capsys, package: Path, smears: Path, tmp_path: Path) -> None:
    code, out, _ = run(capsys, "predict", smears / "p1" / "a.png", "--cells", "-m", package)
    assert code == 0 and "sample" in out and "field" in out and "1 field(s), 2 cell(s)" in out
    for extra in (["--gradcam", str(tmp_path)], ["--engine", "ray", "-o", str(tmp_path / "x.parquet")]):
        code, _, err = run(capsys, "predict", smears / "p1", "--cells", "-m", package, *extra)
        assert code == 2 and "--cells does not go with" in err and len(err.strip().splitlines()) == 1


def test_a_cell_package_needs_cells(capsys, package: Path, smears: Path, tmp_path: Path) -> None:
    cell_package = tmp_path / "cellpkg"
    shutil.copytree(package, cell_package)
    from leukoscope.inference.package import MODEL_JSON

    info = json.loads((cell_package / MODEL_JSON).read_text())
    info["unit"] = "cells"
    (cell_package / MODEL_JSON).write_text(json.dumps(info))
    code, _, err = run(capsys, "predict", smears / "p1", "-m", cell_package)
    assert code == 2 and "add --cells" in err
    code, out, _ = run(capsys, "predict", smears / "p1", "--cells", "-m", cell_package, "-f", "json")
    assert code == 0 and json.loads(out)["model_unit"] == "cells"

"""What users already have keeps working: run folders and packages written by leukoscope 0.1.0 (before the
package moved into part folders) still load and predict and evaluate as they did, and the bundled model's
calls on its test part are the ones it made before.

`tests/fixtures/v0_1_0/` was written by commit 7d04912 (the last flat layout): a tiny `leukoscope train` run
(test_efficientnet, 1 epoch, 32 px), `leukoscope export` of it, and that code's outputs in `expected/`
(see its README.md). Probabilities are compared to 1e-4 and calls exactly except where a number sits within
that distance of a threshold, so the test does not depend on the CPU's instruction set.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from tests.helpers.cli import run
from tests.helpers.images import REPO_ROOT, SHARED_ALL, SHARED_ALL_MISSING

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "v0_1_0"
BUNDLED_EXPECTED = Path(__file__).resolve().parent / "fixtures" / "bundled_test_part_predictions.csv"
TOLERANCE = 1e-4
EXACT = ("path", "status", "error", "width", "height", "sha256")
NOT_COMPARED = {"created", "timing", "files", "leukoscope_version"}  # when and where, not what


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _near(a: str, b: str) -> bool:
    return a == b or (a != "" and b != "" and abs(float(a) - float(b)) <= TOLERANCE)


def assert_same_predictions(got: Path, expected: Path, *, confidence_threshold: float, ood_threshold: float) -> None:
    """Same rows, same columns; numbers within TOLERANCE; label and review flag identical unless the
    expected confidence or OOD score lies within TOLERANCE-scale reach of its threshold. A row realigned since
    (leukoscope.review.realign: a call from another magnification or hue) must have been flagged out of
    distribution before and is still flagged; its call and probabilities may differ. A row the Benign view check
    flags since (leukoscope.review.benign_check) was an unflagged Benign call and keeps its call and numbers."""
    got_rows, expected_rows = _rows(got), _rows(expected)
    assert len(got_rows) == len(expected_rows)
    assert list(got_rows[0]) == list(expected_rows[0]), "the CSV columns changed"
    probability_columns = [c for c in expected_rows[0] if c.startswith("p_")]
    for new, old in zip(got_rows, expected_rows, strict=True):
        for column in EXACT:
            assert new[column] == old[column], (column, new["path"])
        if "realigned" in new["review_codes"].split("; "):
            assert float(old["ood_score"]) > ood_threshold and "out_of_distribution" in old["review_codes"], new["path"]
            assert new["review"] == old["review"] == "True", new["path"]
            assert abs(float(new["ood_score"]) - float(old["ood_score"])) <= 1e-2 * float(old["ood_score"]), new["path"]
            continue
        for column in (*probability_columns, "confidence"):
            assert _near(new[column], old[column]), (column, new["path"], new[column], old[column])
        if "benign_view" in new["review_codes"].split("; "):  # the Benign view check only adds a flag
            assert old["label"] == new["label"] == "Benign" and old["review"] == "False", new["path"]
            assert new["review"] == "True" and new["review_codes"] == "benign_view", new["path"]
            continue
        assert abs(float(new["ood_score"] or 0) - float(old["ood_score"] or 0)) <= 1e-2 * max(1.0, float(old["ood_score"] or 0))
        ranked = sorted((float(old[c]) for c in probability_columns), reverse=True)
        near_tie = ranked[0] - ranked[1] <= 2 * TOLERANCE
        near_threshold = (abs(float(old["confidence"]) - confidence_threshold) <= 2 * TOLERANCE
                          or abs(float(old["ood_score"] or 0) - ood_threshold) <= 1e-2 * ood_threshold)
        if not near_tie:
            assert new["label"] == old["label"], new["path"]
        if not (near_tie or near_threshold):
            assert (new["review"], new["review_codes"], new["review_reasons"]) == (
                old["review"], old["review_codes"], old["review_reasons"]), new["path"]


def _numbers_match(new, old, where: str = "") -> None:
    if isinstance(old, dict):
        assert isinstance(new, dict) and set(new) == set(old), (where, sorted(set(new) ^ set(old)))
        for key in old:
            if key not in NOT_COMPARED:
                _numbers_match(new[key], old[key], f"{where}.{key}")
    elif isinstance(old, list):
        assert isinstance(new, list) and len(new) == len(old), where
        for i, (a, b) in enumerate(zip(new, old, strict=True)):
            _numbers_match(a, b, f"{where}[{i}]")
    elif isinstance(old, float) and not isinstance(old, bool):
        assert new == pytest.approx(old, abs=TOLERANCE), where
    else:
        assert new == old, where


@pytest.fixture
def old_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the 0.1.0 fixture as the working directory (its CSVs hold relative paths)."""
    copy = tmp_path / "v0_1_0"
    shutil.copytree(FIXTURE, copy)
    monkeypatch.chdir(copy)
    return copy


def _thresholds(package: Path) -> tuple[float, float]:
    review = json.loads((package / "model.json").read_text())["review"]
    return float(review["confidence_threshold"]), float(review["ood_threshold"])


@pytest.mark.parametrize(("model", "backend", "expected"), [
    ("package", "auto", "predict_package.csv"),
    ("package", "torch", "predict_package_torch.csv"),
    ("run", "auto", "predict_run.csv"),
])
def test_a_0_1_0_package_and_run_folder_predict_as_before(old_outputs, capsys, model, backend, expected):
    code, _, err = run(capsys, "predict", "data", "--model", model, "--backend", backend, "--out", "now.csv")
    assert code == 0, err
    threshold, ood = _thresholds(old_outputs / "package")
    assert_same_predictions(old_outputs / "now.csv", old_outputs / "expected" / expected,
                            confidence_threshold=threshold, ood_threshold=ood)


@pytest.mark.parametrize(("model", "split", "expected"), [
    ("package", ["--split", "run/split.csv"], "evaluate_package_metrics.json"),
    ("run", ["--split", "run/split.csv"], "evaluate_run_metrics.json"),
])
def test_a_0_1_0_package_and_run_folder_evaluate_to_the_same_numbers(old_outputs, capsys, model, split, expected):
    code, _, err = run(capsys, "evaluate", model, "data", *split, "--part", "test", "--out", "now")
    assert code == 0, err
    now = json.loads((old_outputs / "now" / "metrics.json").read_text())
    _numbers_match(now, json.loads((old_outputs / "expected" / expected).read_text()))


def test_a_0_1_0_run_folder_exports_to_a_package_that_loads(old_outputs, capsys):
    """The run's config names the data folder it was trained on (/tmp/fx/data, where the fixture was made),
    which a fresh machine lacks: export says so in one line, and takes the folder where it is now."""
    code, _, err = run(capsys, "export", "run", "--out", "again")
    assert Path("/tmp/fx/data").is_dir() or (code == 1 and "pass --data FOLDER" in err and err.count("\n") <= 2), err
    code, _, err = run(capsys, "export", "run", "--out", "again", "--data", "data")
    assert code == 0, err
    import leukoscope

    predictor = leukoscope.load_model(old_outputs / "again")
    [prediction] = predictor.predict_paths([old_outputs / "data" / "Pro" / "Pro-000.jpg"])
    assert prediction.status == "ok"


def test_a_0_1_0_config_yaml_still_trains(old_outputs, capsys):
    """`--config` of a run folder written by 0.1.0 (what `--resume` and re-runs read) is still accepted."""
    code, _, err = run(capsys, "train", "data", "--config", "run/config.yaml", "--out-dir", "again", "--quiet")
    assert code == 0, err
    [run_dir] = (old_outputs / "again").iterdir()
    assert (run_dir / "best.pt").is_file()


@pytest.mark.slow
def test_the_bundled_model_makes_the_same_calls_on_its_test_part(tmp_path, capsys, monkeypatch):
    """`leukoscope predict` on the bundled split's test part writes what it wrote before the restructure."""
    if not SHARED_ALL.is_dir():
        pytest.skip(SHARED_ALL_MISSING)
    with (REPO_ROOT / "bundle" / "split.csv").open(newline="") as handle:
        paths = [row["path"] for row in csv.DictReader(handle) if row["part"] == "test"]
    monkeypatch.chdir(SHARED_ALL)
    code, _, err = run(capsys, "predict", *paths, "--out", str(tmp_path / "now.csv"))
    assert code == 0, err
    from leukoscope.inference.package import bundled_package_path

    threshold, ood = _thresholds(bundled_package_path())
    assert_same_predictions(tmp_path / "now.csv", BUNDLED_EXPECTED, confidence_threshold=threshold, ood_threshold=ood)

"""`leukoscope evaluate` and `leukoscope compare`, driven through `main` as a user would."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.cli import run
from tests.helpers.evalfixtures import make_noise_dataset, make_run

pytestmark = pytest.mark.usefixtures("wide_console")


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("cli-eval")
    return make_run(base / "run", make_noise_dataset(base / "ALL"))


def test_evaluate_prints_metrics_and_writes_into_the_run_folder(run_folder, capsys):
    code, out, err = run(capsys, "evaluate", run_folder, "--bootstrap", "20", "--quiet")
    assert code == 0, err
    assert "Accuracy" in out and "Leukemia sensitivity" in out and "interval" in out
    assert "leukemia images called benign" in out
    assert "exact (Clopper-Pearson)" in out and "percentile bootstrap" in out  # the method of each interval
    assert "95% intervals: exact Clopper-Pearson intervals for the proportions" in out
    assert "Research software" in out
    assert f"wrote {run_folder}/" in out
    for name in ("metrics.json", "predictions.csv", "report.html", "MODEL_CARD.md", "calibration.json"):
        assert (run_folder / name).is_file(), name


def test_evaluate_warns_about_leakage_with_the_count(run_folder, tmp_path, capsys):
    code, _, err = run(capsys, "evaluate", run_folder, run_folder / "split.csv", "--root",
                         run_folder.parent / "ALL", "--part", "train", "--out", tmp_path / "leak", "--bootstrap", "0",
                         "--no-calibrate", "-q")
    assert code == 0, err
    assert "warning:" in err and "LEAKAGE: 12 of 12 evaluated images" in err
    assert (tmp_path / "leak" / "report.html").is_file()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--part", "holdout"], 2, "--part must be one of"),
        (["--bootstrap", "-1"], 2, "--bootstrap must be >= 0"),
        (["--bootstrap", "99999999999999999999"], 2, "at most 100000"),  # ran for ever
        (["--seed", "-1"], 2, "--seed must be 0 or more"),  # numpy refused it after the model was scored
        (["--batch-size", "0"], 2, "--batch-size must be at least 1"),
    ],
)
def test_evaluate_bad_options_exit_2(run_folder, capsys, args, code, message):
    got, _, err = run(capsys, "evaluate", run_folder, *args)
    assert got == code and message in err


def test_evaluate_errors_are_one_line(run_folder, tmp_path, capsys):
    code, _, err = run(capsys, "evaluate", tmp_path / "missing-run")
    assert code == 2 and "model not found" in err
    (tmp_path / "empty-run").mkdir()
    code, _, err = run(capsys, "evaluate", tmp_path / "empty-run", run_folder.parent / "ALL")
    assert code == 1 and "no checkpoint" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "empty.csv").write_text("path,label,sha256\n")  # a manifest without rows
    code, _, err = run(capsys, "evaluate", run_folder, tmp_path / "empty.csv", "--root", run_folder.parent / "ALL",
                       "--out", tmp_path / "e", "-q")
    assert code == 1 and err == f"error: {tmp_path / 'empty.csv'} lists no images\n"
    assert not (tmp_path / "e").exists()


def test_compare_writes_markdown_and_html(run_folder, tmp_path, capsys):
    other = make_run(tmp_path / "run-b", run_folder.parent / "ALL", seed=1)
    assert run(capsys, "evaluate", other, "--bootstrap", "0", "--no-calibrate", "-q")[0] == 0
    if not (run_folder / "metrics.json").is_file():
        assert run(capsys, "evaluate", run_folder, "--bootstrap", "0", "-q")[0] == 0
    code, out, err = run(capsys, "compare", run_folder, other, "--out", tmp_path / "compare.md")
    assert code == 0, err
    assert "McNemar run vs run-b" in out and "Accuracy" in out
    markdown = (tmp_path / "compare.md").read_text(encoding="utf-8")
    assert "| metric | run | run-b |" in markdown and "Paired tests" in markdown
    code, _, err = run(capsys, "compare", run_folder, other, "--out", tmp_path / "compare.html", "-q")
    assert code == 0 and (tmp_path / "compare.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    code, _, err = run(capsys, "compare", run_folder, other, "--out", tmp_path / "compare.pdf")
    assert code == 2 and ".html or .md" in err
    code, _, err = run(capsys, "compare", run_folder, tmp_path)
    assert code == 1 and "leukoscope evaluate" in err


def test_evaluate_default_scores_the_bundled_model_on_a_labs_folder(tmp_path, capsys, monkeypatch):
    from PIL import Image

    from tests.helpers.modelfixtures import smear_image

    (tmp_path / "lab" / "Benign").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(smear_image(0, i, size=224)).save(tmp_path / "lab" / "Benign" / f"{i}.jpg")
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "evaluate", "default", "lab", "--bootstrap", "0", "--out", "eval", "--quiet")
    assert code == 0, err
    assert "review flag: " in out and "benign called leukemia without a flag:" in out and "of 3" in out
    accuracy = json.loads((tmp_path / "eval" / "metrics.json").read_text(encoding="utf-8"))["headline"]["accuracy"]
    # no resampling asked for, yet the proportion has its exact interval, below 1 even when all 3 are right
    assert accuracy["method"] == "clopper-pearson" and accuracy["n"] == 3 and accuracy["low"] < accuracy["high"]
    row = next(line for line in out.splitlines() if "Accuracy" in line and "Balanced" not in line)
    assert f"{accuracy['low']:.3f} – {accuracy['high']:.3f}" in row and "exact (Clopper-Pearson)" in row


def test_a_labs_folder_named_after_no_class_is_a_clear_error(tmp_path, capsys, monkeypatch):
    from PIL import Image

    (tmp_path / "lab" / "lymphocyte").mkdir(parents=True)
    Image.new("RGB", (224, 224), (200, 150, 170)).save(tmp_path / "lab" / "lymphocyte" / "a.jpg")
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "evaluate", "default", "lab", "--bootstrap", "0", "--out", "eval")
    assert code == 1
    assert "['lymphocyte'] unknown to the model" in err and "Benign/ for normal lymphocytes" in err


@pytest.mark.slow
def test_evaluate_localisation_reports_where_the_model_looks(tiny_package, tmp_path, capsys):
    from tests.helpers.modelfixtures import make_smear_dataset

    data = make_smear_dataset(tmp_path / "lab", per_class=1, size=96)
    code, out, err = run(capsys, "evaluate", tiny_package, data, "--localisation", "--bootstrap", "0",
                         "--out", tmp_path / "eval", "--quiet")
    assert code == 0, err
    assert "where the model looks: Target (Grad-CAM peak inside a white cell" in out
    assert "localisation.csv" in out and (tmp_path / "eval" / "localisation.csv").is_file()
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert saved["localisation"]["groups"]["all images"]["n_images"] == 4

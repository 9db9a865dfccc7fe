"""`leukoscope adapt`, driven through `main` as a user would: the new package, the one-line refusals (exit 1)
and bad input (exit 2), with nothing written at --out unless it succeeded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import leukoscope
from tests.adaptation.fixtures import make_lab, shared_parent
from tests.helpers.cli import one_error_line, run
from tests.helpers.modelfixtures import shared_tiny_package

pytestmark = pytest.mark.usefixtures("wide_console")



@pytest.fixture(scope="module")
def stained_lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lab(tmp_path_factory.mktemp("lab") / "lab", hue=15)


@pytest.mark.slow
def test_adapt_writes_a_package_that_names_its_parent(tmp_path_factory: pytest.TempPathFactory, stained_lab: Path,
                                                      tmp_path: Path, capsys) -> None:
    parent = shared_parent(tmp_path_factory)
    out = tmp_path / "adapted"
    code, stdout, err = run(capsys, "adapt", parent, stained_lab, "--out", out, "--epochs", "16", "--lr", "5e-4",
                            "--augment", "paper", "--device", "cpu", "--name", "lab-b", "--simulate-ratio", "1", "-q")
    assert code == 0, err
    line = stdout.strip()
    assert line.startswith(f"wrote {out} (adapted from parent): lab held-out accuracy ") and "(24 images)" in line
    assert "replay" not in line
    info = json.loads((out / "model.json").read_text())
    assert info["name"] == "lab-b" and info["parent"]["name"] == "parent"
    assert info["adaptation"]["datasets"]["replay"] is None
    assert info["adaptation"]["options"]["simulate_ratio"] == 1.0  # asked for, but no replay to simulate from
    assert info["adaptation"]["lab_shift"] is None
    assert info["adaptation"]["command"].startswith("leukoscope")  # as typed (sys.argv), like train's
    assert (out / "MODEL_CARD.md").is_file() and (out / "adaptation.yaml").is_file()
    metrics = info["adaptation"]["metrics"]["lab_held_out"]
    assert metrics["after"]["accuracy"] > metrics["before"]["accuracy"]
    assert leukoscope.load_model(out).info["parent"] == info["parent"]


def test_adapt_refusal_is_one_line_and_writes_nothing(tmp_path_factory: pytest.TempPathFactory, stained_lab: Path,
                                                      tmp_path: Path, capsys) -> None:
    tiny = shared_tiny_package(tmp_path_factory)
    out = tmp_path / "new"
    code, _, err = run(capsys, "adapt", tiny, stained_lab, "--out", out, "--epochs", "1", "--lr", "1e-9",
                       "--augment", "none", "--device", "cpu", "-q")
    assert code == 1
    assert one_error_line(err).startswith("error: refused: on the lab's 24 held-out images the adapted model's "
                                          "accuracy")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_adapt_bad_input_is_one_line_exit_2(tmp_path_factory: pytest.TempPathFactory, stained_lab: Path,
                                            tmp_path: Path, capsys) -> None:
    tiny = shared_tiny_package(tmp_path_factory)
    out = tmp_path / "new"
    cases = [
        (["adapt", tmp_path / "none", stained_lab, "--out", out], "model package not found"),
        (["adapt", tiny, tmp_path / "none", "--out", out], "lab data folder not found"),
        (["adapt", tiny, stained_lab, "--out", out, "--epochs", "0"], "--epochs must be at least 1"),
        (["adapt", tiny, stained_lab, "--out", out, "--held-out", "1.5"], "--held-out must be in (0, 1)"),
        (["adapt", tiny, stained_lab, "--out", out, "--augment", "wild"], "--augment must be one of"),
        (["adapt", tiny, stained_lab, "--out", out, "--simulate-ratio", "nan"], "--simulate-ratio must be a finite"),
        (["adapt", tiny, stained_lab, "--out", out, "--split", tmp_path / "s.csv"], "give --replay DATA too"),
        (["adapt", tiny, stained_lab, "--out", tiny], "exists and is not empty"),
    ]
    for args, message in cases:
        code, _, err = run(capsys, *args)
        assert code == 2 and message in one_error_line(err), (args, err)
    odd = make_lab(tmp_path / "odd", per_class=3)
    (odd / "Pre").rename(odd / "Monocyte")
    code, _, err = run(capsys, "adapt", tiny, odd, "--out", out)
    assert code == 1 and "['Monocyte'] the model does not know" in one_error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd"]

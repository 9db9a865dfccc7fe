"""`leukoscope export`, driven through `main` as a user would."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.cli import run
from tests.helpers.modelfixtures import shared_tiny_run

pytestmark = pytest.mark.usefixtures("wide_console")


def test_export_command(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, capsys) -> None:
    run_dir = shared_tiny_run(tmp_path_factory)
    code, out, err = run(capsys, "export", run_dir, "--out", tmp_path / "pkg", "--name", "cli-test")
    assert code == 0, err
    assert "fp32 ONNX vs PyTorch" in out and "wrote" in out and "model.onnx" in out
    assert json.loads((tmp_path / "pkg" / "model.json").read_text())["name"] == "cli-test"
    code, _, err = run(capsys, "export", tmp_path / "no-run", "--out", tmp_path / "pkg2")
    assert code == 2 and "run folder not found" in err


def test_export_shift_rules_option(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, capsys) -> None:
    run_dir = shared_tiny_run(tmp_path_factory)
    code, out, err = run(capsys, "export", run_dir, "--out", tmp_path / "pkg", "--shift-rules")
    assert code == 0, err
    assert "shifted val copy" in out and "Benign calls reviewed below confidence" in out
    review = json.loads((tmp_path / "pkg" / "model.json").read_text())["review"]
    assert review["benign_confidence_threshold"] >= review["confidence_threshold"]
    low, high = review["cell_scale_range"]
    assert 0 < low <= high


def test_an_out_that_cannot_be_written_is_refused_before_the_export(tmp_path_factory, tmp_path: Path, capsys) -> None:
    run_dir = shared_tiny_run(tmp_path_factory)
    (tmp_path / "a-file").write_text("x")
    out = tmp_path / "a-file" / "pkg"  # no folder can be made under a file
    code, stdout, err = run(capsys, "export", run_dir, "--out", out)
    assert code == 2 and "parity" not in stdout.lower()  # refused before the (slow) parity checks
    assert err.startswith(f"error: cannot write --out {out}: ") and err.count("\n") == 1

"""`leukoscope.evaluation.inputs`: the one leakage check, and no import cycle with `evaluate`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from leukoscope.data.manifest import ImageRecord, Manifest
from leukoscope.evaluation.inputs import Leakage, check_leakage


def _manifest(root: Path, rows: list[tuple[str, str, str]]) -> Manifest:
    """rows of (path, sha256, part)."""
    records = [ImageRecord(path=p, label="Benign", sha256=h, part=part) for p, h, part in rows]
    return Manifest(root, ("Benign",), records)


def _run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    _manifest(run, [("a.jpg", "h-a", "train"), ("b.jpg", "h-b", "train"), ("v.jpg", "h-v", "val"),
                    ("t.jpg", "h-t", "test")]).write_csv(run / "split.csv")
    return run


def test_overlap_is_counted_by_content_in_the_training_part(tmp_path):
    run = _run(tmp_path)
    evaluated = _manifest(tmp_path, [("copy-of-a.jpg", "h-a", ""), ("v.jpg", "h-v", ""), ("new.jpg", "h-new", ""),
                                     ("b.jpg", "", "")])
    leakage = check_leakage(evaluated, run)
    assert leakage == Leakage(True, 1, ("copy-of-a.jpg",), 2)
    assert leakage.to_dict() == {"checked": True, "train_overlap": 1, "examples": ["copy-of-a.jpg"],
                                 "train_images": 2}


def test_more_parts_and_same_paths_for_the_runs_own_data(tmp_path):
    run = _run(tmp_path)
    evaluated = _manifest(tmp_path, [("copy-of-a.jpg", "h-a", ""), ("v.jpg", "h-v", ""), ("b.jpg", "", ""),
                                     ("t.jpg", "h-t", "")])
    leakage = check_leakage(evaluated, run, parts=("train", "val"), match_paths=True)
    assert (leakage.checked, leakage.train_overlap, leakage.examples) == (True, 3, ("copy-of-a.jpg", "v.jpg", "b.jpg"))


def test_unchecked_without_a_readable_split(tmp_path):
    part = _manifest(tmp_path, [("a.jpg", "h-a", "")])
    assert check_leakage(part, None) == Leakage(False)
    assert check_leakage(part, tmp_path).to_dict() == {"checked": False, "train_overlap": 0, "examples": []}
    (tmp_path / "split.csv").write_text("not,a\nmanifest,file\n", encoding="utf-8")
    assert not check_leakage(part, tmp_path).checked


def test_inputs_does_not_import_evaluate():
    code = ("import sys, leukoscope.evaluation.inputs; "
            "sys.exit('leukoscope.evaluation.evaluate' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0

"""leukoscope.training.soft_targets: reading teachers' prediction CSVs, averaging them, mixing with the labels, and
the exact round trip through a run's soft_targets.csv."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from leukoscope.data.manifest import ImageRecord, Manifest
from leukoscope.errors import ConfigError, DataError
from leukoscope.training.soft_targets import (
    read_teacher_csv,
    split_sources,
    teacher_mean,
    training_targets,
    write_targets_csv,
)

CLASSES = ("Benign", "Early Pre-B", "Pre-B", "Pro-B")
HEADER = "path,label,confidence,review,review_reasons,p_Benign,p_Early Pre-B,p_Pre-B,p_Pro-B,ood_score,width,height,sha256,error"


def part(*labels: str) -> Manifest:
    records = [ImageRecord(path=f"{label}/{i}.jpg", label=label, sha256=f"hash{i}", part="train")
               for i, label in enumerate(labels)]
    return Manifest(Path("/data"), CLASSES, records)


def teacher(path: Path, rows: dict[str, tuple[float, ...]], extra: str = "") -> Path:
    lines = [HEADER] + [f"x/{key}.jpg,Benign,0.9,False,,{','.join(map(str, p))},1.0,64,64,{key},"
                        for key, p in rows.items()]
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


def test_split_sources_takes_comma_separated_paths():
    assert split_sources(" a.csv, b.csv ,,") == [Path("a.csv"), Path("b.csv")]


def test_the_csv_of_leukoscope_predict_is_read_by_hash_and_failed_rows_are_left_out(tmp_path):
    path = teacher(tmp_path / "t.csv", {"hash0": (0.7, 0.1, 0.1, 0.1)},
                   extra="bad.jpg,,,True,unreadable,,,,,,0,0,,cannot decode\n")
    table = read_teacher_csv(path, CLASSES)
    assert list(table) == ["hash0"]
    np.testing.assert_allclose(table["hash0"], [0.7, 0.1, 0.1, 0.1])


@pytest.mark.parametrize(("content", "message"), [
    ("path,sha256,p_Benign\nx,h,1\n", "missing column"),
    (HEADER + "\nx,B,1,False,,a,b,c,d,1,64,64,h,\n", "not numbers"),
    (HEADER + "\nx,B,1,False,,0.5,0.1,0.1,0.1,1,64,64,h,\n", "sum to 1"),
    (HEADER + "\nx,B,1,False,,1.2,-0.2,0,0,1,64,64,h,\n", ">= 0"),
])
def test_malformed_teacher_files_are_refused_with_the_reason(tmp_path, content, message):
    path = tmp_path / "t.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_teacher_csv(path, CLASSES)


def test_a_missing_teacher_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        teacher_mean([tmp_path / "nope.csv"], CLASSES)
    with pytest.raises(ConfigError, match="no file"):
        teacher_mean([], CLASSES)


def test_teachers_are_averaged_over_the_images_they_all_scored(tmp_path):
    a = teacher(tmp_path / "a.csv", {"hash0": (1, 0, 0, 0), "hash1": (0, 1, 0, 0)})
    b = teacher(tmp_path / "b.csv", {"hash0": (0, 0, 0, 1)})
    table = teacher_mean([a, b], CLASSES)
    assert list(table) == ["hash0"]
    np.testing.assert_allclose(table["hash0"], [0.5, 0, 0, 0.5])


def test_targets_mix_teacher_and_label_by_the_weight():
    table = {"hash0": np.array([0.6, 0.4, 0, 0]), "hash1": np.array([0.25, 0.25, 0.25, 0.25])}
    targets = training_targets(part("Early Pre-B", "Pro-B"), table, 0.5)
    np.testing.assert_allclose(targets, [[0.3, 0.7, 0, 0], [0.125, 0.125, 0.125, 0.625]])
    np.testing.assert_allclose(training_targets(part("Early Pre-B", "Pro-B"), table, 0.0),
                               [[0, 1, 0, 0], [0, 0, 0, 1]])


def test_a_training_image_without_a_target_is_refused_not_silently_trained_on_its_label():
    with pytest.raises(DataError, match=r"1 training image\(s\) have no soft target \(e.g. Pre-B/1.jpg\)"):
        training_targets(part("Benign", "Pre-B"), {"hash0": np.array([1.0, 0, 0, 0])}, 0.5)
    with pytest.raises(ConfigError, match="in \\[0, 1\\]"):
        training_targets(part("Benign"), {"hash0": np.array([1.0, 0, 0, 0])}, 1.5)


def test_written_targets_read_back_to_the_same_numbers(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=50)
    images = part(*[CLASSES[i % 4] for i in range(50)])
    table = {f"hash{i}": p for i, p in enumerate(probs)}
    targets = training_targets(images, table, 0.37)
    write_targets_csv(tmp_path / "soft_targets.csv", images, targets)
    again = training_targets(images, read_teacher_csv(tmp_path / "soft_targets.csv", CLASSES, normalise=False), 1.0)
    assert np.array_equal(targets, again)
    assert np.allclose(targets.sum(1), 1, atol=1e-5)

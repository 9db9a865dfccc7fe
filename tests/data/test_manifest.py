"""Manifest: labels, parts, a digest that names the exact data, and CSV that round-trips."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import pytest

from leukoscope.data.classes import CANONICAL_CLASSES
from leukoscope.data.manifest import ImageRecord, Manifest, assign_parts, read_manifest_csv
from leukoscope.errors import DataError


def record(i: int, label: str, part: str = "") -> ImageRecord:
    return ImageRecord(
        path=f"{label}/img-{i:03d}.jpg", label=label, sha256=f"{i:064x}", width=224, height=224,
        mode="RGB", bytes=1000 + i, dhash=f"{i:016x}", part=part,
    )


@pytest.fixture
def manifest(tmp_path: Path) -> Manifest:
    records = [record(0, "Benign", "train"), record(1, "Pro-B", "test"), record(2, "Pro-B", "train"),
               record(3, "Early Pre-B", "val")]
    return Manifest(tmp_path, CANONICAL_CLASSES, records)


def test_labels_counts_and_paths(manifest: Manifest, tmp_path: Path) -> None:
    assert len(manifest) == 4
    assert manifest.labels == [0, 3, 3, 1]
    assert manifest.class_counts() == {"Benign": 1, "Early Pre-B": 1, "Pre-B": 0, "Pro-B": 2}
    assert manifest.paths()[1] == tmp_path / "Pro-B/img-001.jpg"


def test_part_selects_records_and_keeps_classes(manifest: Manifest) -> None:
    train = manifest.part("train")
    assert [r.path for r in train.records] == ["Benign/img-000.jpg", "Pro-B/img-002.jpg"]
    assert train.classes == CANONICAL_CLASSES
    assert len(manifest.part("train", "val")) == 3


def test_unknown_part_is_an_error(manifest: Manifest) -> None:
    with pytest.raises(DataError, match="unknown part"):
        manifest.part("training")


def test_digest_is_order_independent_and_sees_every_change(manifest: Manifest) -> None:
    digest = manifest.digest()
    assert len(digest) == 64
    assert manifest.with_records(reversed(manifest.records)).digest() == digest
    moved = [replace(manifest.records[0], part="test"), *manifest.records[1:]]
    relabelled = [replace(manifest.records[0], label="Pre-B"), *manifest.records[1:]]
    changed_bytes = [replace(manifest.records[0], sha256="f" * 64), *manifest.records[1:]]
    others = {manifest.with_records(r).digest() for r in (moved, relabelled, changed_bytes)}
    assert digest not in others and len(others) == 3


def test_csv_round_trip(manifest: Manifest, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "manifest.csv"
    manifest.write_csv(out)
    back = read_manifest_csv(out, manifest.root)
    assert back.records == manifest.records
    assert back.classes == CANONICAL_CLASSES
    assert back.digest() == manifest.digest()
    assert not list(out.parent.glob(".*.tmp"))  # atomic write leaves no temporary file


def test_csv_is_plain_csv_with_named_columns(manifest: Manifest, tmp_path: Path) -> None:
    out = tmp_path / "manifest.csv"
    manifest.write_csv(out)
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    assert {"path", "sha256", "label", "part", "width", "height"} <= set(rows[0])
    assert rows[1]["label"] == "Pro-B" and rows[1]["part"] == "test" and rows[1]["width"] == "224"


def test_classes_of_another_dataset_are_the_sorted_labels(tmp_path: Path) -> None:
    records = [record(0, "neutrophil"), record(1, "eosinophil")]
    out = tmp_path / "m.csv"
    Manifest(tmp_path, ("eosinophil", "neutrophil"), records).write_csv(out)
    assert read_manifest_csv(out, tmp_path).classes == ("eosinophil", "neutrophil")


def test_explicit_classes_are_kept_and_checked(manifest: Manifest, tmp_path: Path) -> None:
    out = tmp_path / "m.csv"
    manifest.write_csv(out)
    wide = (*CANONICAL_CLASSES, "Other")
    assert read_manifest_csv(out, tmp_path, classes=wide).classes == wide
    with pytest.raises(DataError, match="outside the classes"):
        read_manifest_csv(out, tmp_path, classes=("Benign", "Pro-B"))


def test_minimal_csv_with_only_required_columns(tmp_path: Path) -> None:
    out = tmp_path / "m.csv"
    out.write_text("path,label,sha256\nBenign/a.jpg,Benign,abc\n")
    (only,) = read_manifest_csv(out, tmp_path).records
    assert only == ImageRecord(path="Benign/a.jpg", label="Benign", sha256="abc")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name,class\na.jpg,Benign\n", "not a leukoscope manifest"),
        ("path,label,sha256,width\na.jpg,Benign,abc,wide\n", "line 2: width must be a whole number"),
        ("path,label,sha256,part\na.jpg,Benign,abc,training\n", "unknown part 'training'"),
        ("path,label,sha256\na.jpg,Benign\n", "too few columns"),
        ("path,label,sha256\n,Benign,abc\n", "empty path or label"),
    ],
)
def test_malformed_csv_is_a_one_line_data_error(tmp_path: Path, text: str, message: str) -> None:
    out = tmp_path / "bad.csv"
    out.write_text(text)
    with pytest.raises(DataError, match=message) as info:
        read_manifest_csv(out, tmp_path)
    assert "\n" not in str(info.value)


def test_missing_or_binary_csv_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read"):
        read_manifest_csv(tmp_path / "nowhere.csv", tmp_path)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\xff\xfe")
    with pytest.raises(DataError, match="not a readable CSV"):
        read_manifest_csv(binary, tmp_path)


def test_assign_parts(manifest: Manifest) -> None:
    parts = {"Benign/img-000.jpg": "test"}
    assigned = assign_parts(manifest, parts)
    assert [r.part for r in assigned.records] == ["test", "", "", ""]
    assert [r.part for r in manifest.records] == ["train", "test", "train", "val"]  # original untouched

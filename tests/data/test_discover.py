"""Discovery, checks and splits: on tiny generated datasets, on every kind of bad input, and on the shared
ALL data where it exists."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import zlib
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from leukoscope.data.classes import CANONICAL_CLASSES
from leukoscope.data.discover import check, dhash, discover, duplicate_groups, group_ids
from leukoscope.data.manifest import Manifest
from leukoscope.data.split import split
from leukoscope.errors import DataError

# ------------------------------------------------------------------------------------------------ helpers


def bomb_png() -> bytes:
    """A tiny valid PNG whose header claims 30000 x 30000 RGBA pixels (3.6 GB if decoded)."""
    buffer = io.BytesIO()
    Image.new("RGBA", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", 30000, 30000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def copy_image(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    return dst


def parts_by_path(manifest: Manifest) -> dict[str, str]:
    return {r.path: r.part for r in manifest.records}


# ---------------------------------------------------------------------------------------------- discovery


def test_discover_tiny_dataset(tiny_dataset: Path) -> None:
    manifest = discover(tiny_dataset, workers=2)
    assert manifest.root == tiny_dataset
    assert manifest.classes == CANONICAL_CLASSES
    assert manifest.class_counts() == dict.fromkeys(CANONICAL_CLASSES, 6)
    assert manifest.problems == [] and manifest.notes == []
    first = manifest.records[0]
    assert first.path == "Benign/Benign-000.jpg"  # relative, POSIX, sorted
    assert first.sha256 == hashlib.sha256((tiny_dataset / first.path).read_bytes()).hexdigest()
    assert (first.width, first.height, first.mode) == (64, 64, "RGB")
    assert first.bytes == (tiny_dataset / first.path).stat().st_size
    assert len(first.dhash) == 16 and int(first.dhash, 16) >= 0
    assert len({r.sha256 for r in manifest.records}) == 24  # the fixture makes no accidental copies
    assert {r.label for r in manifest.records if r.path.startswith("Early/")} == {"Early Pre-B"}


def test_discover_is_deterministic(tiny_dataset: Path) -> None:
    assert discover(tiny_dataset, workers=1).records == discover(tiny_dataset, workers=3).records


def test_progress_callback_counts_every_file(tiny_dataset: Path) -> None:
    calls: list[tuple[int, int]] = []
    discover(tiny_dataset, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (24, 24) and len(calls) == 24


def test_images_in_nested_folders_are_found_and_other_files_ignored(tiny_dataset: Path, make_image) -> None:
    make_image(tiny_dataset / "Pro" / "slide-7" / "field-1.png", seed=99)
    (tiny_dataset / "Pro" / "readme.txt").write_text("not an image, and not named like one")
    (tiny_dataset / "Pro" / ".hidden").mkdir()
    (tiny_dataset / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    manifest = discover(tiny_dataset)
    assert manifest.class_counts()["Pro-B"] == 7
    assert "Pro/slide-7/field-1.png" in {r.path for r in manifest.records}
    assert manifest.problems == []


# -------------------------------------------------------------------------------------------- bad inputs


def test_missing_folder_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        discover(tmp_path / "nowhere")


def test_file_instead_of_folder_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "data.zip"
    path.write_bytes(b"PK")
    with pytest.raises(DataError, match="not a folder"):
        discover(path)


def test_empty_folder_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no class folders"):
        discover(tmp_path)


def test_class_folders_without_any_image_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "Benign").mkdir()
    (tmp_path / "Pro").mkdir()
    (tmp_path / "Pro" / "notes.txt").write_text("todo")
    with pytest.raises(DataError, match="no images found"):
        discover(tmp_path)


def test_class_folder_with_no_images_gives_a_note_and_blocks_training(tiny_dataset: Path) -> None:
    for path in (tiny_dataset / "Pre").iterdir():
        path.unlink()
    manifest = discover(tiny_dataset)
    assert manifest.class_counts()["Pre-B"] == 0
    assert any("Pre/" in note and "no images" in note for note in manifest.notes)
    report = check(manifest)
    assert not report.usable
    assert any("'Pre-B' has no usable images" in reason for reason in report.blocking)


def test_every_bad_file_is_skipped_with_a_one_line_reason(tiny_dataset: Path, image_bytes) -> None:
    folder = tiny_dataset / "Early"
    good = image_bytes(seed=42)
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is a text file with an image name\n")
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "bomb.png").write_bytes(bomb_png())
    (folder / "self.jpg").symlink_to("self.jpg")
    (folder / "loop-a.jpg").symlink_to("loop-b.jpg")
    (folder / "loop-b.jpg").symlink_to("loop-a.jpg")
    (folder / "dangling.jpg").symlink_to("gone.jpg")
    (folder / "again").symlink_to(folder, target_is_directory=True)  # directory loop
    manifest = discover(tiny_dataset)
    reasons = {p.path: p.reason for p in manifest.problems}
    assert reasons["Early/zero.jpg"] == "empty file (0 bytes)"
    assert "not an image" in reasons["Early/text.jpg"]
    assert "truncated" in reasons["Early/truncated.jpg"]
    assert "too large" in reasons["Early/bomb.png"]
    for link in ("self.jpg", "loop-a.jpg", "loop-b.jpg"):
        assert "symbolic links" in reasons[f"Early/{link}"]
    assert "cannot read file" in reasons["Early/dangling.jpg"]
    assert len(reasons) == 8
    assert all("\n" not in reason for reason in reasons.values())
    assert any("again" in note and "not followed" in note for note in manifest.notes)
    assert manifest.class_counts() == dict.fromkeys(CANONICAL_CLASSES, 6)  # the good images all survive
    assert check(manifest).usable  # unreadable files are skipped, not blocking


def test_symlink_loop_at_class_level_is_skipped_not_taken_for_a_class(tiny_dataset: Path) -> None:
    (tiny_dataset / "loop").symlink_to(".", target_is_directory=True)
    (tiny_dataset / "up").symlink_to("..", target_is_directory=True)
    manifest = discover(tiny_dataset)
    assert manifest.classes == CANONICAL_CLASSES
    assert len(manifest) == 24
    loop_notes = [note for note in manifest.notes if "(a loop), skipped" in note]
    assert sorted(Path(note.split(":")[0]).name for note in loop_notes) == ["loop", "up"]


def test_symlinked_class_folder_elsewhere_is_followed(tmp_path: Path, make_dataset) -> None:
    elsewhere = make_dataset("elsewhere", ["Pro"], per_class=3, seed=5)
    root = make_dataset("data", ["Benign", "Early", "Pre"], per_class=3)
    (root / "Pro").symlink_to(elsewhere / "Pro", target_is_directory=True)
    assert discover(root).class_counts() == dict.fromkeys(CANONICAL_CLASSES, 3)


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "CMYK", "P"])
def test_odd_modes_are_usable_and_recorded(tiny_dataset: Path, make_image, mode: str) -> None:
    suffix = ".jpg" if mode in ("L", "CMYK") else ".png"
    make_image(tiny_dataset / "Benign" / f"odd{suffix}", seed=77, mode=mode)
    manifest = discover(tiny_dataset)
    (odd,) = [r for r in manifest.records if r.path == f"Benign/odd{suffix}"]
    assert odd.mode == mode
    assert manifest.problems == []


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root, and root reads files whatever their mode")
def test_unreadable_file_and_folder_are_reported(tiny_dataset: Path) -> None:
    locked_file = tiny_dataset / "Pro" / "Pro-000.jpg"
    locked_dir = tiny_dataset / "Pre" / "locked"
    locked_dir.mkdir()
    locked_file.chmod(0)
    locked_dir.chmod(0)
    try:
        manifest = discover(tiny_dataset)
    finally:
        locked_file.chmod(0o644)
        locked_dir.chmod(0o755)
    reasons = {p.path: p.reason for p in manifest.problems}
    assert "ermission denied" in reasons["Pro/Pro-000.jpg"]
    assert any("locked" in note and "cannot read folder" in note for note in manifest.notes)


# ------------------------------------------------------------------------------------------------ layouts


def test_kaggle_original_and_segmented_layout_uses_the_originals(tmp_path: Path, make_dataset) -> None:
    make_dataset("leukemia/Original")
    make_dataset("leukemia/Segmented", seed=1)
    manifest = discover(tmp_path / "leukemia")
    assert manifest.classes == CANONICAL_CLASSES
    assert len(manifest) == 24
    assert all(r.path.startswith("Original/") for r in manifest.records)
    assert any("Original/" in note and "Segmented" in note for note in manifest.notes)


def test_kaggle_4class_layout_with_wrapper_folder(tmp_path: Path, make_dataset) -> None:
    folders = ["Benign", "[Malignant] early Pre-B", "[Malignant] Pre-B", "[Malignant] Pro-B"]
    make_dataset("download/Blood cell Cancer [ALL]", folders, per_class=3)
    manifest = discover(tmp_path / "download")
    assert manifest.classes == CANONICAL_CLASSES
    assert manifest.class_counts() == dict.fromkeys(CANONICAL_CLASSES, 3)
    pro = [r.path for r in manifest.records if r.label == "Pro-B"]
    assert len(pro) == 3 and all(p.startswith("Blood cell Cancer [ALL]/[Malignant] Pro-B/") for p in pro)


def test_class_names_are_case_insensitive(make_dataset) -> None:
    root = make_dataset("data", ["BENIGN", "early", "PRE", "pRo"], per_class=2)
    manifest = discover(root)
    assert manifest.classes == CANONICAL_CLASSES
    assert manifest.class_counts() == dict.fromkeys(CANONICAL_CLASSES, 2)


def test_other_dataset_keeps_its_folder_names_sorted(make_dataset) -> None:
    root = make_dataset("cells", ["neutrophil", "eosinophil", "lymphocyte"], per_class=2)
    manifest = discover(root)
    assert manifest.classes == ("eosinophil", "lymphocyte", "neutrophil")
    assert manifest.labels == [0, 0, 1, 1, 2, 2]
    assert check(manifest).usable


def test_two_folders_for_one_class_is_an_error(make_dataset) -> None:
    root = make_dataset("data", ["Pre", "Pre-B", "Benign"], per_class=1)
    with pytest.raises(DataError, match="same class"):
        discover(root)


# ------------------------------------------------------------------------------------------------- checks


def test_check_tiny_dataset_is_usable_and_json_serialisable(tiny_dataset: Path) -> None:
    report = check(discover(tiny_dataset))
    assert report.usable and report.blocking == []
    assert report.modal_size == (64, 64) and report.size_outliers == []
    info = json.loads(json.dumps(report.as_dict()))
    assert info["images"] == 24 and info["usable"] is True
    assert info["per_class"]["Pro-B"] == {"count": 6, "sizes": {"64x64": 6}, "modes": {"RGB": 6}}


def test_duplicates_within_a_class_are_reported_but_do_not_block(tiny_dataset: Path) -> None:
    copy_image(tiny_dataset / "Pro" / "Pro-000.jpg", tiny_dataset / "Pro" / "copy.jpg")
    report = check(discover(tiny_dataset))
    assert report.duplicate_groups_within == [["Pro/Pro-000.jpg", "Pro/copy.jpg"]]
    assert report.duplicate_groups_across == []
    assert report.usable


def test_identical_image_in_two_classes_is_a_blocking_label_conflict(tiny_dataset: Path) -> None:
    copy_image(tiny_dataset / "Benign" / "Benign-003.jpg", tiny_dataset / "Early" / "conflict.jpg")
    report = check(discover(tiny_dataset))
    assert report.duplicate_groups_across == [["Benign/Benign-003.jpg", "Early/conflict.jpg"]]
    assert not report.usable
    assert any("label conflict" in reason and "Early/conflict.jpg" in reason for reason in report.blocking)


def test_size_outliers_are_listed(tiny_dataset: Path, make_image) -> None:
    make_image(tiny_dataset / "Pre" / "big.jpg", seed=11, size=96)
    report = check(discover(tiny_dataset))
    assert report.modal_size == (64, 64)
    assert report.size_outliers == [("Pre/big.jpg", 96, 96)]
    assert report.usable


def test_a_single_class_blocks_training(make_dataset) -> None:
    root = make_dataset("data", ["neutrophil", "eosinophil"], per_class=2)
    shutil.rmtree(root / "eosinophil")
    alone = discover(root)  # a single folder of images is a one-class dataset, not a wrapper
    assert alone.classes == ("neutrophil",)
    assert any("at least 2" in reason for reason in check(alone).blocking)
    manifest = discover(make_dataset("one", ["neutrophil", "eosinophil"], per_class=2))
    kept = [r for r in manifest.records if r.label == "neutrophil"]
    single = Manifest(manifest.root, ("neutrophil",), kept)
    assert any("at least 2" in reason for reason in check(single).blocking)


def test_one_known_class_folder_is_a_one_class_dataset_not_a_wrapper(make_dataset) -> None:
    """A lab checking the model on its own normal lymphocytes has only Benign/: that is the class."""
    root = make_dataset("lab", ["Benign"], per_class=3)
    manifest = discover(root)
    assert manifest.classes == ("Benign", "Early Pre-B", "Pre-B", "Pro-B")
    assert manifest.class_counts() == {"Benign": 3, "Early Pre-B": 0, "Pre-B": 0, "Pro-B": 0}
    assert all(r.path.startswith("Benign/") for r in manifest.records)
    wrapped = make_dataset("wrapped", ["Benign", "Early", "Pre", "Pro"], per_class=1)
    outer = wrapped.parent / "outer"
    outer.mkdir()
    wrapped.rename(outer / "Blood cell Cancer [ALL]")
    assert len(discover(outer)) == 4  # a single folder that is not a class name is still a wrapper


def test_duplicate_groups_helper(tiny_dataset: Path) -> None:
    copy_image(tiny_dataset / "Pro" / "Pro-001.jpg", tiny_dataset / "Pro" / "c1.jpg")
    copy_image(tiny_dataset / "Pro" / "Pro-001.jpg", tiny_dataset / "Pro" / "c2.jpg")
    groups = duplicate_groups(discover(tiny_dataset).records)
    assert [sorted(r.path for r in g) for g in groups] == [["Pro/Pro-001.jpg", "Pro/c1.jpg", "Pro/c2.jpg"]]


# ------------------------------------------------------------------------------------------------- splits


def test_split_is_stratified_and_complete(tiny_dataset: Path) -> None:
    result = split(discover(tiny_dataset), test_size=0.3, val_size=0.2, seed=0)
    counts = Counter((r.label, r.part) for r in result.records)
    for name in CANONICAL_CLASSES:
        assert (counts[(name, "train")], counts[(name, "val")], counts[(name, "test")]) == (3, 1, 2)
    assert len(result) == 24


def test_split_is_deterministic_for_a_seed_and_varies_with_it(tiny_dataset: Path) -> None:
    manifest = discover(tiny_dataset)
    a = parts_by_path(split(manifest, test_size=0.3, seed=3))
    assert a == parts_by_path(split(manifest, test_size=0.3, seed=3))
    others = [parts_by_path(split(manifest, test_size=0.3, seed=s)) for s in range(4, 9)]
    assert any(other != a for other in others)


def test_split_keeps_exact_copies_in_one_part(make_dataset) -> None:
    root = make_dataset("data", per_class=10)
    for i in range(5):
        copy_image(root / "Pro" / f"Pro-{i:03d}.jpg", root / "Pro" / f"copy-{i}.jpg")
    manifest = discover(root)
    for seed in range(6):
        parts = parts_by_path(split(manifest, test_size=0.5, seed=seed, near_duplicate_distance=None))
        for i in range(5):
            assert parts[f"Pro/Pro-{i:03d}.jpg"] == parts[f"Pro/copy-{i}.jpg"]


def test_split_keeps_near_copies_together_unless_asked_not_to(tiny_dataset: Path) -> None:
    source = tiny_dataset / "Benign" / "Benign-000.jpg"
    Image.open(source).save(tiny_dataset / "Benign" / "recompressed.jpg", quality=60)  # other bytes
    manifest = discover(tiny_dataset)
    by_path = {r.path: r for r in manifest.records}
    assert by_path["Benign/recompressed.jpg"].sha256 != by_path["Benign/Benign-000.jpg"].sha256
    ids = dict(zip([r.path for r in manifest.records], group_ids(manifest), strict=True))
    assert ids["Benign/recompressed.jpg"] == ids["Benign/Benign-000.jpg"]
    exact = dict(zip([r.path for r in manifest.records], group_ids(manifest, near_duplicate_distance=None),
                     strict=True))
    assert exact["Benign/recompressed.jpg"] != exact["Benign/Benign-000.jpg"]
    for seed in range(6):
        parts = parts_by_path(split(manifest, test_size=0.5, seed=seed))
        assert parts["Benign/recompressed.jpg"] == parts["Benign/Benign-000.jpg"]


def test_dhash_is_stable_under_recompression_and_differs_between_images(image_bytes) -> None:
    a = Image.open(io.BytesIO(image_bytes(seed=1)))
    b = Image.open(io.BytesIO(image_bytes(seed=2)))
    buffer = io.BytesIO()
    a.save(buffer, "JPEG", quality=50)
    a_again = Image.open(buffer)
    distance = bin(int(dhash(a), 16) ^ int(dhash(a_again), 16)).count("1")
    assert distance <= 4
    assert bin(int(dhash(a), 16) ^ int(dhash(b), 16)).count("1") > 8


def test_small_class_gets_every_requested_part(make_dataset) -> None:
    root = make_dataset("data", ["a", "b"], per_class=3)
    result = split(discover(root), test_size=0.6, val_size=0.2, seed=0)
    for name in ("a", "b"):
        parts = sorted(r.part for r in result.records if r.label == name)
        assert parts == ["test", "train", "val"]


def test_split_refuses_a_class_too_small_naming_it(make_dataset) -> None:
    root = make_dataset("data", ["big", "tiny"], per_class=4)
    for path in sorted((root / "tiny").iterdir())[1:]:
        path.unlink()
    with pytest.raises(DataError, match="class 'tiny' has 1 image") as info:
        split(discover(root), test_size=0.3)
    assert "\n" not in str(info.value)


def test_copies_count_as_one_group_when_judging_class_size(make_dataset) -> None:
    root = make_dataset("data", ["big", "tiny"], per_class=4)
    for i, path in enumerate(sorted((root / "tiny").iterdir())[1:]):
        path.unlink()
        copy_image(root / "tiny" / "tiny-000.jpg", root / "tiny" / f"copy-{i}.jpg")
    with pytest.raises(DataError, match=r"4 image\(s\) in 1 distinct group"):
        split(discover(root), test_size=0.3)


@pytest.mark.parametrize(
    ("test_size", "val_size", "message"),
    [(1.0, 0.0, "test_size"), (-0.1, 0.0, "test_size"), (0.3, 1.5, "val_size"), (0.6, 0.4, "below 1")],
)
def test_split_refuses_impossible_fractions(tiny_dataset: Path, test_size, val_size, message) -> None:
    manifest = discover(tiny_dataset)
    with pytest.raises(DataError, match=message):
        split(manifest, test_size=test_size, val_size=val_size)


def test_split_of_an_empty_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="empty"):
        split(Manifest(tmp_path, CANONICAL_CLASSES, []))


def test_split_result_round_trips_through_csv(tiny_dataset: Path, tmp_path: Path) -> None:
    from leukoscope.data.manifest import read_manifest_csv

    result = split(discover(tiny_dataset), test_size=0.3, seed=1)
    result.write_csv(tmp_path / "split.csv")
    back = read_manifest_csv(tmp_path / "split.csv", tiny_dataset)
    assert back.digest() == result.digest()
    assert len(back.part("test")) == 8


# ---------------------------------------------------------------------------------- shared ALL dataset

EXPECTED_COUNTS = {"Benign": 428, "Early Pre-B": 849, "Pre-B": 815, "Pro-B": 704}


@pytest.mark.shared_data
def test_shared_all_counts(shared_all_manifest: Manifest) -> None:
    manifest = shared_all_manifest
    assert manifest.classes == CANONICAL_CLASSES
    assert len(manifest) == 2796
    assert manifest.class_counts() == EXPECTED_COUNTS
    assert manifest.problems == []
    assert {(r.width, r.height, r.mode) for r in manifest.records} == {(224, 224, "RGB")}


@pytest.mark.shared_data
def test_shared_all_has_37_duplicate_pairs_all_inside_pro(shared_all_manifest: Manifest) -> None:
    report = check(shared_all_manifest)
    assert report.usable
    assert report.duplicate_groups_across == []
    assert len(report.duplicate_groups_within) == 37
    assert all(len(group) == 2 for group in report.duplicate_groups_within)
    assert all(path.startswith("Pro/") for group in report.duplicate_groups_within for path in group)


@pytest.mark.shared_data
@pytest.mark.parametrize("near_duplicate_distance", [None, 4], ids=["exact", "near"])
def test_shared_all_70_30_split(shared_all_manifest: Manifest, near_duplicate_distance) -> None:
    manifest = shared_all_manifest
    result = split(manifest, test_size=0.3, seed=0, near_duplicate_distance=near_duplicate_distance)
    parts = parts_by_path(result)
    assert set(parts.values()) == {"train", "test"}
    for group in check(manifest).duplicate_groups_within:
        assert len({parts[path] for path in group}) == 1, group
    test = [r for r in result.records if r.part == "test"]
    assert abs(len(test) / len(result) - 0.3) < 0.01
    overall = Counter(r.label for r in result.records)
    in_test = Counter(r.label for r in test)
    for name in CANONICAL_CLASSES:
        share_overall = overall[name] / len(result)
        share_test = in_test[name] / len(test)
        assert abs(share_test - share_overall) < 0.01, (name, share_overall, share_test)
        assert abs(in_test[name] / overall[name] - 0.3) < 0.01, name
    assert parts == parts_by_path(split(manifest, test_size=0.3, seed=0,
                                        near_duplicate_distance=near_duplicate_distance))



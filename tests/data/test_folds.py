"""`leukoscope.data.folds.split_folds`: every image tested exactly once, stratified, copies kept in one fold."""

from __future__ import annotations

import shutil
from collections import Counter

import pytest

from leukoscope.data.discover import discover
from leukoscope.data.folds import split_folds
from leukoscope.errors import DataError


def test_every_image_is_tested_once_and_val_comes_from_the_other_folds(make_dataset) -> None:
    manifest = discover(make_dataset("data", per_class=12))
    folds = split_folds(manifest, folds=3, val_size=0.25, seed=0)
    assert len(folds) == 3
    tested = Counter(r.path for fold in folds for r in fold.records if r.part == "test")
    assert set(tested) == {r.path for r in manifest.records} and set(tested.values()) == {1}
    for fold in folds:
        per_class = Counter((r.label, r.part) for r in fold.records)
        for name in manifest.classes:
            assert per_class[(name, "test")] == 4  # 12 per class, 3 folds
            assert per_class[(name, "val")] == 3  # 25% of the class
            assert per_class[(name, "train")] == 5


def test_folds_are_deterministic_for_a_seed_and_vary_with_it(make_dataset) -> None:
    manifest = discover(make_dataset("data", per_class=12))

    def parts(seed: int) -> list[list[str | None]]:
        return [[r.part for r in fold.records] for fold in split_folds(manifest, folds=3, seed=seed)]

    assert parts(0) == parts(0)
    assert parts(0) != parts(1)


def test_copies_share_a_fold(make_dataset) -> None:
    root = make_dataset("data", per_class=9)
    for i in range(4):
        shutil.copyfile(root / "Pre" / f"Pre-{i:03d}.jpg", root / "Pre" / f"copy-{i}.jpg")
    manifest = discover(root)
    for fold in split_folds(manifest, folds=3, near_duplicate_distance=None):
        part = {r.path: r.part for r in fold.records}
        for i in range(4):
            assert part[f"Pre/Pre-{i:03d}.jpg"] == part[f"Pre/copy-{i}.jpg"]


@pytest.mark.parametrize(("folds", "val_size", "message"), [
    (1, 0.1, "at least 2 folds"),
    (3, 1.0, "val_size"),
    (6, 0.1, "too few for 6 folds and a val part"),
])
def test_bad_requests_are_data_errors(make_dataset, folds, val_size, message) -> None:
    manifest = discover(make_dataset("data", per_class=5))
    with pytest.raises(DataError, match=message):
        split_folds(manifest, folds=folds, val_size=val_size)

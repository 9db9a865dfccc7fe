"""Class names of the published ALL layouts map onto four canonical classes; other datasets keep theirs."""

from __future__ import annotations

import pytest

from leukoscope.data.classes import (
    CANONICAL_CLASSES,
    CLASS_IDS,
    canonical_class,
    class_id,
    resolve_classes,
)
from leukoscope.errors import DataError

KAGGLE_4CLASS = ("Benign", "[Malignant] early Pre-B", "[Malignant] Pre-B", "[Malignant] Pro-B")


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("Benign", "Benign"),
        ("Early", "Early Pre-B"),
        ("Pre", "Pre-B"),
        ("Pro", "Pro-B"),
        ("[Malignant] early Pre-B", "Early Pre-B"),
        ("[Malignant] Pre-B", "Pre-B"),
        ("[Malignant] Pro-B", "Pro-B"),
        ("BENIGN", "Benign"),
        ("early", "Early Pre-B"),
        ("EARLY PRE-B", "Early Pre-B"),
        ("early_pre_b", "Early Pre-B"),
        ("pre_b", "Pre-B"),
        ("pRo-B", "Pro-B"),
    ],
)
def test_published_folder_names_map_to_canonical_classes(folder: str, expected: str) -> None:
    assert canonical_class(folder) == expected


@pytest.mark.parametrize("folder", ["neutrophil", "eosinophil", "ALL", "Original", "", "Prolymphocyte"])
def test_other_names_are_not_aliases(folder: str) -> None:
    assert canonical_class(folder) is None


@pytest.mark.parametrize(
    "folders",
    [
        ("Pro", "Benign", "Early", "Pre"),
        KAGGLE_4CLASS,
        ("benign", "EARLY", "pre", "PRO"),
    ],
    ids=["plain", "kaggle-4class", "mixed-case"],
)
def test_every_published_layout_resolves_to_canonical_order(folders: tuple[str, ...]) -> None:
    mapping = resolve_classes(folders)
    assert mapping.classes == CANONICAL_CLASSES
    assert mapping.is_canonical
    assert sorted(mapping.folder_to_class.values()) == sorted(CANONICAL_CLASSES)
    assert set(mapping.folder_to_class) == set(folders)


def test_canonical_layout_maps_each_folder_to_its_class() -> None:
    mapping = resolve_classes(KAGGLE_4CLASS)
    assert mapping.folder_to_class["[Malignant] early Pre-B"] == "Early Pre-B"
    assert mapping.folder_to_class["[Malignant] Pro-B"] == "Pro-B"
    assert mapping.index("Benign") == 0
    assert mapping.index("Pro-B") == 3


def test_subset_of_canonical_folders_keeps_all_four_classes_so_indices_never_shift() -> None:
    mapping = resolve_classes(["Pro", "Benign"])
    assert mapping.classes == CANONICAL_CLASSES
    assert mapping.index("Pro-B") == 3
    assert mapping.folder_to_class == {"Benign": "Benign", "Pro": "Pro-B"}


def test_other_dataset_uses_sorted_folder_names() -> None:
    mapping = resolve_classes(["neutrophil", "eosinophil", "lymphocyte"])
    assert mapping.classes == ("eosinophil", "lymphocyte", "neutrophil")
    assert not mapping.is_canonical
    assert mapping.folder_to_class["neutrophil"] == "neutrophil"


def test_one_unknown_folder_makes_the_whole_set_non_canonical() -> None:
    mapping = resolve_classes(["Benign", "Early", "Pre", "Pro", "Unsure"])
    assert mapping.classes == ("Benign", "Early", "Pre", "Pro", "Unsure")
    assert mapping.folder_to_class["Early"] == "Early"


def test_two_folders_for_one_class_is_an_error_naming_them() -> None:
    with pytest.raises(DataError, match=r"same class") as info:
        resolve_classes(["Pre", "Pre-B", "Benign"])
    assert "Pre-B" in str(info.value)
    assert "\n" not in str(info.value)


def test_no_folders_is_an_error() -> None:
    with pytest.raises(DataError, match="no class folders"):
        resolve_classes([])


def test_duplicate_names_in_input_are_collapsed() -> None:
    assert resolve_classes(["b", "a", "b"]).classes == ("a", "b")


def test_class_ids() -> None:
    assert [class_id(c) for c in CANONICAL_CLASSES] == list(CLASS_IDS)
    assert class_id("Early Pre-B") == "early_pre_b"
    assert class_id("Band Neutrophil (segmented)") == "band_neutrophil_segmented"

"""Canonical classes of the ALL dataset and the folder names its published layouts use.

Users download this dataset in several layouts (Kaggle `Original/`, `Segmented/`, `Blood cell Cancer [ALL]/`
and the plain `Benign/Early/Pre/Pro`). All of them map onto the same four canonical classes, in the same
order, so that a model trained on one layout evaluates on another. Any other folder-per-class dataset keeps
its own folder names as classes, sorted, so leukoscope also works on other blood-cell datasets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from leukoscope.errors import DataError

CANONICAL_CLASSES: tuple[str, ...] = ("Benign", "Early Pre-B", "Pre-B", "Pro-B")
CLASS_IDS: tuple[str, ...] = ("benign", "early_pre_b", "pre_b", "pro_b")
BENIGN_CLASS = "Benign"

# Normalised folder name -> canonical class. Normalisation lower-cases and drops everything but letters,
# so "[Malignant] early Pre-B", "early_pre_b" and "Early" all become short keys.
_ALIASES: dict[str, str] = {
    "benign": "Benign",
    "hem": "Benign",
    "early": "Early Pre-B",
    "earlyprebalign": "Early Pre-B",
    "earlypreb": "Early Pre-B",
    "malignantearlypreb": "Early Pre-B",
    "pre": "Pre-B",
    "preb": "Pre-B",
    "malignantpreb": "Pre-B",
    "pro": "Pro-B",
    "prob": "Pro-B",
    "malignantprob": "Pro-B",
}


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z]", "", name.lower())


def canonical_class(folder_name: str) -> str | None:
    """The canonical class a published folder name stands for, or None when it is not one of them."""
    return _ALIASES.get(_normalise(folder_name))


@dataclass(frozen=True)
class ClassMapping:
    """How the class folders of one dataset map onto class names, and the class order of the model."""

    classes: tuple[str, ...]
    folder_to_class: dict[str, str]

    @property
    def is_canonical(self) -> bool:
        return self.classes == CANONICAL_CLASSES

    def index(self, class_name: str) -> int:
        return self.classes.index(class_name)


def resolve_classes(folder_names: Iterable[str]) -> ClassMapping:
    """Map class folders onto classes.

    When every folder is a known alias of this dataset, the result uses the canonical four classes in their
    canonical order (missing ones included, so label indices never shift). Otherwise the folder names
    themselves are the classes, sorted.

    >>> resolve_classes(["Pro", "Benign", "Early", "Pre"]).folder_to_class["Early"]
    'Early Pre-B'
    >>> resolve_classes(["neutrophil", "eosinophil"]).classes
    ('eosinophil', 'neutrophil')
    """
    names = sorted(set(folder_names))
    if not names:
        raise DataError("no class folders found")
    mapped = {name: canonical_class(name) for name in names}
    if all(mapped.values()):
        targets = [mapped[n] for n in names]
        duplicates = sorted({t for t in targets if targets.count(t) > 1})
        if duplicates:
            raise DataError(f"several folders map onto the same class {duplicates}: {names}")
        return ClassMapping(CANONICAL_CLASSES, {n: str(mapped[n]) for n in names})
    return ClassMapping(tuple(names), {n: n for n in names})


def class_id(class_name: str) -> str:
    """Short machine id of a class ('Early Pre-B' -> 'early_pre_b'); other datasets get a slug."""
    if class_name in CANONICAL_CLASSES:
        return CLASS_IDS[CANONICAL_CLASSES.index(class_name)]
    return re.sub(r"[^a-z0-9]+", "_", class_name.lower()).strip("_")

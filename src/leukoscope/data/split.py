"""Train/val/test parts, stratified by class and grouped so that copies of one image never straddle two
parts: leaking a copy of a test image into training inflates every score computed after it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import replace

import numpy as np

from leukoscope.data.discover import group_ids
from leukoscope.data.manifest import Manifest
from leukoscope.errors import DataError


def check_fraction(name: str, value: float) -> None:
    """DataError unless `value` is a fraction in [0, 1) (a part size of a split)."""
    if not 0.0 <= value < 1.0:
        raise DataError(f"{name} must be in [0, 1), got {value}")


def class_groups(
    manifest: Manifest, *, near_duplicate_distance: int | None = 4
) -> tuple[list[int], dict[int, list[int]], dict[str, list[int]]]:
    """(group id per record, record indices per group, group ids per class) for splitting: copies and
    near-copies form one group, and a group belongs to the class of most of its images."""
    ids = group_ids(manifest, near_duplicate_distance=near_duplicate_distance)
    members: dict[int, list[int]] = defaultdict(list)
    for i, gid in enumerate(ids):
        members[gid].append(i)
    strata: dict[str, list[int]] = defaultdict(list)
    for gid, idx in members.items():
        strata[Counter(manifest.records[i].label for i in idx).most_common(1)[0][0]].append(gid)
    return ids, members, strata


def split(
    manifest: Manifest,
    *,
    test_size: float = 0.3,
    val_size: float = 0.0,
    seed: int = 0,
    near_duplicate_distance: int | None = 4,
) -> Manifest:
    """Assign every record a part ("train", "val", "test"), stratified by class and duplicate-aware.

    `test_size` and `val_size` are fractions of the whole dataset. Groups of copies are kept whole and
    assigned to the part of the group's majority class. Deterministic for a given seed.
    Raises DataError when a class is too small to give every requested part at least one group.
    """
    check_fraction("test_size", test_size)
    check_fraction("val_size", val_size)
    if test_size + val_size >= 1.0:
        raise DataError(f"test_size + val_size must be below 1, got {test_size + val_size:.2f}")
    if not len(manifest):
        raise DataError("cannot split an empty dataset")
    ids, members, strata = class_groups(manifest, near_duplicate_distance=near_duplicate_distance)
    rng = np.random.default_rng(seed)
    part_of: dict[int, str] = {}
    for label in manifest.classes:
        gids = sorted(strata.get(label, []))
        if not gids:
            continue
        rng.shuffle(gids)
        n_images = sum(len(members[g]) for g in gids)
        wanted = [(p, f) for p, f in (("test", test_size), ("val", val_size)) if f > 0]
        if len(gids) < len(wanted) + 1:
            raise DataError(
                f"class {label!r} has {n_images} image(s) in {len(gids)} distinct group(s): too few for a "
                f"train part plus {', '.join(p for p, _ in wanted)} part(s); add images or lower the sizes"
            )
        cursor = 0
        for k, (part, fraction) in enumerate(wanted):
            target = max(1, round(n_images * fraction))
            keep = len(wanted) - k  # groups left for the parts still to fill, train included
            taken = 0
            while taken < target and cursor < len(gids) - keep:
                part_of[gids[cursor]] = part
                taken += len(members[gids[cursor]])
                cursor += 1
        for gid in gids[cursor:]:
            part_of[gid] = "train"
    records = [replace(r, part=part_of[ids[i]]) for i, r in enumerate(manifest.records)]
    return manifest.with_records(records)

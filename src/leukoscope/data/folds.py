"""K-fold cross-validation splits: every image is held out for testing exactly once.

With 2,796 images one 30% test part holds ~700 leukemia images, so a rate of one missed case in a
thousand is invisible or a single image. K folds test a training recipe on every image, which is the
honest way to estimate such rare errors, and no fold's test images ever steer training (each fold has its
own validation part for early stopping and calibration). Folds are stratified by class and keep copies
and near-copies of an image in one fold, as `leukoscope.data.split.split` does.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from leukoscope.data.manifest import Manifest
from leukoscope.data.split import check_fraction, class_groups
from leukoscope.errors import DataError


def split_folds(
    manifest: Manifest,
    *,
    folds: int,
    val_size: float = 0.1,
    seed: int = 0,
    near_duplicate_distance: int | None = 4,
) -> list[Manifest]:
    """`folds` manifests; in the i-th, fold i is the test part, `val_size` of each class (a fraction of
    the whole class) is the val part, taken from the other folds, and the rest is train.

    Groups of copies are assigned whole; each class's groups go to the fold with the fewest images of
    that class so far, so fold sizes differ by at most one group. Deterministic for a given seed.
    Raises DataError for fewer than 2 folds or a class with fewer groups than folds (plus one with a val
    part).
    """
    if folds < 2:
        raise DataError(f"cross-validation needs at least 2 folds, got {folds}")
    check_fraction("val_size", val_size)
    if not len(manifest):
        raise DataError("cannot split an empty dataset")
    ids, members, strata = class_groups(manifest, near_duplicate_distance=near_duplicate_distance)
    rng = np.random.default_rng(seed)
    fold_of: dict[int, int] = {}
    order: dict[str, list[int]] = {}
    for label in manifest.classes:
        gids = sorted(strata.get(label, []))
        if not gids:
            continue
        minimum = folds + (1 if val_size > 0 else 0)
        if len(gids) < minimum:
            raise DataError(f"class {label!r} has {len(gids)} distinct image group(s): too few for {folds} folds"
                            f"{' and a val part' if val_size > 0 else ''}; use fewer folds")
        rng.shuffle(gids)
        order[label] = gids
        filled = [0] * folds
        for gid in gids:
            fold = int(np.argmin(filled))
            fold_of[gid] = fold
            filled[fold] += len(members[gid])
    result = []
    for test_fold in range(folds):
        part_of = {gid: "test" if fold == test_fold else "train" for gid, fold in fold_of.items()}
        for gids in order.values():
            rest = [g for g in gids if fold_of[g] != test_fold]
            target = round(sum(len(members[g]) for g in gids) * val_size)
            taken = 0
            for gid in rest[:-1]:  # the train part keeps at least one group of every class
                if taken >= target:
                    break
                part_of[gid] = "val"
                taken += len(members[gid])
        records = [replace(r, part=part_of[ids[i]]) for i, r in enumerate(manifest.records)]
        result.append(manifest.with_records(records))
    return result

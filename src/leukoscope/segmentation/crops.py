"""Cell crops of many fields, each with its field's label: what a cell model is trained and calibrated on.

Why one function: training (the cell model's fit), the export of a cell package (temperature, review
thresholds, OOD statistics) and the benchmark need the crops of the same images cut exactly as
`predict --cells` cuts them (leukoscope.segmentation.field at its fixed scale).

Each cell takes its field's label, which is wrong whenever a field holds cells of another kind: a normal
lymphocyte or a hematogone next to the blasts of a leukemic field, or a leukemic cell in a field the
dataset calls Benign. The labels are therefore noisy, most of all for the leukemia classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from leukoscope.data.imaging import load_rgb
from leukoscope.errors import ImageError
from leukoscope.segmentation.field import OK, PARAMS, SegmentationParams, segment_field

DECODE_MAX_SIDE = 2048  # as `leukoscope segment`: huge files are reduced while decoding


@dataclass
class CellCrops:
    """Crops (N x S x S x 3 uint8 at the segmentation's scale), their field's label and field index, and what
    happened to each field (its segmentation status, "unreadable" when it could not be decoded)."""

    crops: np.ndarray
    labels: np.ndarray
    fields: np.ndarray
    cell_ids: np.ndarray
    statuses: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def choose_cells(count: int, per_field: int, seed: int, index: int) -> list[int]:
    """Positions of the cells kept from a field of `count` cells: all of them when `per_field` is 0, else a
    seeded choice of at most `per_field` (the same for the same seed and field index), in order."""
    if per_field <= 0 or count <= per_field:
        return list(range(count))
    rng = np.random.default_rng([seed, index])
    return sorted(int(i) for i in rng.choice(count, size=per_field, replace=False))


def field_crops(paths: Sequence[str | Path], labels: Sequence[int], *, per_field: int = 0, seed: int = 0,
                params: SegmentationParams = PARAMS, progress: Callable[[int, int], None] | None = None
                ) -> CellCrops:
    """Segment each field and keep its crops (at most `per_field` per field, chosen with `seed`; 0: all),
    each labelled with its field's label. Unreadable fields and fields without cells give no crop."""
    if len(paths) != len(labels):
        raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
    crops: list[np.ndarray] = []
    out_labels: list[int] = []
    fields: list[int] = []
    ids: list[int] = []
    statuses: list[str] = []
    for index, (path, label) in enumerate(zip(paths, labels, strict=True)):
        try:
            rgb = np.asarray(load_rgb(path, max_side=DECODE_MAX_SIDE))
        except ImageError:
            statuses.append("unreadable")
            continue
        result = segment_field(rgb, params)
        statuses.append(result.status)
        if result.status == OK:
            for position in choose_cells(len(result.cells), per_field, seed, index):
                crops.append(result.crops[position])
                out_labels.append(int(label))
                fields.append(index)
                ids.append(result.cells[position].cell_id)
        if progress is not None:
            progress(index + 1, len(paths))
    size = params.crop_size
    return CellCrops(np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8),
                     np.asarray(out_labels, np.int64), np.asarray(fields, np.int64), np.asarray(ids, np.int64),
                     statuses)

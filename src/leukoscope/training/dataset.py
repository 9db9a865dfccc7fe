"""The training data: the dataset discovered and split (or a saved split reused), and each part decoded once
into uint8 tensors on the training device.

Decoding up front costs one pass over the images and makes every later epoch a tensor operation; a
resumed run reuses the run's own split.csv, so it trains and scores on exactly the same images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from leukoscope.data.discover import discover
from leukoscope.data.manifest import Manifest, read_manifest_csv
from leukoscope.data.split import split
from leukoscope.errors import DataError
from leukoscope.models.inputs import load_uint8_batch
from leukoscope.models.preprocessing import Preprocess
from leukoscope.training import runs
from leukoscope.training.config import TrainConfig


@dataclass
class TensorSet:
    """Images of one part as uint8 tensors on the training device, and their labels."""

    images: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor | None = None  # N x C soft targets (distillation); None: train on the labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class PreparedData(NamedTuple):
    """The whole dataset as discovered (no parts) and the same images with their parts."""

    full: Manifest
    parted: Manifest


def load_part(manifest: Manifest, part: str, preprocess: Preprocess, device: torch.device, workers: int) -> TensorSet:
    """Decode the images of one part of `manifest` onto `device`."""
    subset = manifest.part(part)
    images = load_uint8_batch(subset.paths(), preprocess, workers=workers)
    labels = torch.tensor(subset.labels, dtype=torch.long)
    return TensorSet(images.to(device), labels.to(device))


def prepare_data(config: TrainConfig, saved_split: Path | None, *,
                 classes: tuple[str, ...] | None = None) -> PreparedData:
    """Discover the dataset and split it (or reuse a saved split).

    `classes`: those of the run being resumed; data with other classes is refused before anything else.
    """
    full = discover(config.data, workers=max(2, config.workers))
    if not len(full):
        raise DataError(f"no usable images in {config.data}")
    if classes is not None:
        runs.check_same_classes(tuple(classes), full.classes)
    source = saved_split or (Path(config.split_csv) if config.split_csv else None)
    if source is not None:
        parted = read_manifest_csv(source, config.data, classes=full.classes)
        known = {r.path for r in full.records}
        missing = [r.path for r in parted.records if r.path not in known]
        if missing:
            raise DataError(f"{len(missing)} image(s) of the split are missing or unreadable in {config.data}, "
                            f"e.g. {missing[0]}")
        return PreparedData(full, parted)
    parted = split(full, test_size=config.test_size, val_size=config.val_size, seed=config.seed,
                   near_duplicate_distance=None if config.near_duplicate_distance < 0 else config.near_duplicate_distance)
    return PreparedData(full, parted)

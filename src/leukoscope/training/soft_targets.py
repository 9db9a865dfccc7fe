"""Soft targets for knowledge distillation: an ensemble's probabilities, per training image.

Why: an ensemble of fine-tuned models with test-time augmentation is more accurate than any of its members
near the Benign / Early Pre-B border, but it costs (models x views) times the compute at every prediction.
Training one fast model on the ensemble's probabilities (Hinton et al., 2015, "Distilling the knowledge in a
neural network") moves that knowledge into the network a lab runs every day, at no inference cost.

The teachers' probabilities come from `leukoscope predict TRAIN_IMAGES --model RUN --tta --format csv`, one
CSV per teacher (columns `sha256` and `p_<class>`); `leukoscope train --set soft_targets=a.csv,b.csv`
averages them. Rows are matched to training images by content hash, so paths may differ between machines.
The training target of an image is `weight * teacher_mean + (1 - weight) * one_hot(label)`.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from leukoscope.data.fileio import write_text
from leukoscope.data.manifest import Manifest
from leukoscope.errors import ConfigError, DataError

PROB_PREFIX = "p_"


def split_sources(value: str) -> list[Path]:
    """The comma-separated CSV paths of the `soft_targets` config value."""
    return [Path(part.strip()) for part in value.split(",") if part.strip()]


def read_teacher_csv(path: Path, classes: Sequence[str], *, normalise: bool = True) -> dict[str, np.ndarray]:
    """sha256 -> probabilities (in `classes` order) from one teacher's predictions CSV.

    Rows without probabilities (images the teacher could not read) are left out; the caller reports any
    training image that ends up without a target. `normalise=False` keeps the values exactly as written
    (a run's own soft_targets.csv, read back on resume).
    """
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = [PROB_PREFIX + name for name in classes]
            missing = [c for c in ["sha256", *columns] if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"soft targets {path}: missing column(s) {', '.join(missing)} "
                                f"(expected the CSV of `leukoscope predict --format csv` for classes {list(classes)})")
            table: dict[str, np.ndarray] = {}
            for line, row in enumerate(reader, start=2):
                if not row.get("sha256") or not row.get(columns[0]):
                    continue
                try:
                    probs = np.array([float(row[c]) for c in columns], dtype=np.float64)
                except ValueError:
                    raise DataError(f"soft targets {path}, line {line}: probabilities are not numbers") from None
                if not np.all(np.isfinite(probs)) or probs.min() < 0 or abs(probs.sum() - 1) > 1e-3:
                    raise DataError(f"soft targets {path}, line {line}: probabilities must be >= 0 and sum to 1")
                table[row["sha256"]] = probs / probs.sum() if normalise else probs
    except FileNotFoundError:
        raise ConfigError(f"soft targets file not found: {path}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read soft targets {path}: {exc}") from None
    return table


def teacher_mean(paths: Sequence[Path], classes: Sequence[str]) -> dict[str, np.ndarray]:
    """The mean of the teachers' probabilities for the images every teacher scored."""
    if not paths:
        raise ConfigError("soft_targets names no file")
    tables = [read_teacher_csv(p, classes) for p in paths]
    shared = set(tables[0]).intersection(*tables[1:])
    return {key: np.mean([t[key] for t in tables], axis=0) for key in shared}


def training_targets(part: Manifest, table: dict[str, np.ndarray], weight: float) -> np.ndarray:
    """N x C targets for the images of `part` (in record order), mixing teacher and label.

    Values are rounded to the 6 decimals that `write_targets_csv` keeps, so a run trains on exactly the
    numbers its soft_targets.csv shows, and a resumed run (which reads that file) on the same ones.
    Raises DataError naming the first image the teachers did not score: a silent fallback to the plain
    label would train a different recipe than the config says.
    """
    if not 0 <= weight <= 1:
        raise ConfigError(f"soft_target_weight must be in [0, 1]; got {weight}")
    missing = [r.path for r in part.records if r.sha256 not in table]
    if missing:
        raise DataError(f"{len(missing)} training image(s) have no soft target (e.g. {missing[0]}); "
                        "run the teachers on every training image")
    one_hot = np.eye(len(part.classes))[part.labels]
    teacher = np.stack([table[r.sha256] for r in part.records]) if part.records else one_hot
    mixed = weight * teacher + (1 - weight) * one_hot
    return np.array([[float(f"{v:.6f}") for v in row] for row in mixed], dtype=np.float64).reshape(mixed.shape)


def write_targets_csv(path: Path, part: Manifest, targets: np.ndarray) -> None:
    """The targets a run trained on, next to its results (atomic), in the teacher CSV format."""
    header = ["path", "sha256", *[PROB_PREFIX + name for name in part.classes]]
    lines = [",".join(header)]
    for record, row in zip(part.records, targets, strict=True):
        quoted = '"' + record.path.replace('"', '""') + '"'
        lines.append(",".join([quoted, record.sha256, *[f"{v:.6f}" for v in row]]))
    write_text(path, "\n".join(lines) + "\n")

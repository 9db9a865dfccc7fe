"""benchmarks/segmentation.py: the tuning images never overlap the reported ones, and a section renders from
a handful of real images (skipped where ../shared is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import segmentation as bench
from tests.helpers.images import SHARED_ALL


def test_tuning_subset_is_disjoint_from_the_reported_images() -> None:
    tuning = bench.tuning_subset()
    assert len(tuning) == 4 * bench.TUNING_PER_CLASS == len(set(tuning))
    assert not set(tuning) & {row["path"] for row in bench.records("test")}
    assert tuning == bench.tuning_subset()  # seeded


def test_cleaned_reference_drops_specks_and_fills_holes() -> None:
    mask = np.zeros((40, 40), bool)
    mask[5:25, 5:25] = True
    mask[12:15, 12:15] = False  # a hole
    mask[30:33, 30:33] = True  # a speck of 9 px
    clean = bench.cleaned(mask)
    assert clean[13, 13] and not clean[31, 31] and clean[5:25, 5:25].all()
    assert bench.iou_dice(mask, mask) == (1.0, 1.0)


@pytest.mark.shared_data
def test_section_renders_from_a_few_real_images() -> None:
    if not (SHARED_ALL.is_dir() and bench.SEGMENTED.is_dir()):
        pytest.skip("../shared/data/ALL and ALL_segmented not present (only on CI and dev machines)")
    rows = [r for label in bench.SHORT for r in [x for x in bench.records("test") if x["label"] == label][:2]]
    scores = bench.score_images(rows)
    assert set(scores) == {"Benign", "Early", "Pre", "Pro"}
    assert all(0 <= v <= 1 for s in scores.values() for v in s["iou"])
    speed = {"wall_ms": 10.0, "cpu_ms": 9.0, "wall_min": 9.5, "wall_max": 11.0, "images": 8, "rounds": 1}
    info = {"cpu": "test CPU", "cores": 1, "logical_cpus": 1, "flags": [], "python": "3", "torch": None,
            "onnxruntime": None, "timm": None, "numpy": np.__version__}  # machine() would import torch: slow
    body = bench.render(scores, speed, (0.5, 0.6), info, "python -m benchmarks.segmentation")
    assert "## Segmentation" in body and "not a medical device" in body and "Pro (not targeted)" in body
    assert "Target mean IoU >= 0.9" in body and "10.0 ms per 224-px field" in body

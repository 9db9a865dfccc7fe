"""Fixtures of the benchmark smoke tests: the session's tiny trained run, its package and its decoded test
images, shared by the speed, accuracy and shift tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import speed
from tests.helpers.modelfixtures import shared_tiny_package, shared_tiny_run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The shared tiny run (best.pt, split.csv with train/val/test parts), its data and its package."""
    run = shared_tiny_run(tmp_path_factory)
    return {"run": run, "data": run.parent / "data", "split": run / "split.csv",
            "package": shared_tiny_package(tmp_path_factory)}


@pytest.fixture(scope="module")
def tiny_images(tiny: dict[str, Path]):
    """(predictor, split manifest, decoded test images) of the tiny package."""
    from leukoscope.inference.predictor import load_predictor

    predictor = load_predictor(tiny["package"], threads=1)
    split = speed.load_split(tiny["split"], tiny["data"], predictor.classes)
    return predictor, split, speed.decoded(split.part("test"), predictor.preprocess)

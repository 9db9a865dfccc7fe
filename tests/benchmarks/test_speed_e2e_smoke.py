"""Smoke test of benchmarks/speed_e2e.py's per-image budget on a few dataset JPEGs and the bundled model:
every stage of `leukoscope predict` is there and measured. Structure only, never timings."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import speed_e2e


@pytest.mark.shared_data
def test_the_budget_names_every_stage(shared_all: Path) -> None:
    from leukoscope.inference.predictor import load_predictor

    files = sorted(shared_all.rglob("*.jpg"))[:8]
    predictor = load_predictor(None, threads=1)
    out = speed_e2e.budget(predictor, files, repeats=1)
    stages = {"read", "hash", "decode", "resize", "checks", "normalise", "model_wall", "model_cpu", "ood", "write"}
    assert stages | {"non_model_cpu"} == set(out)
    assert all(value >= 0 for value in out.values())
    assert speed_e2e.model_only_ips(predictor, files * 8, repeats=1) > 0

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
    assert stages | {"non_model_cpu", "review_view_passes", "review_views_cpu"} == set(out)
    assert all(value >= 0 for value in out.values())
    assert speed_e2e.model_only_ips(predictor, files * 8, repeats=1) > 0


@pytest.mark.shared_data
def test_the_review_view_passes_are_counted(shared_all: Path) -> None:
    from leukoscope.inference.predictor import load_predictor
    from leukoscope.review.benign_check import BenignCheck
    from leukoscope.review.realign import View

    files = sorted(shared_all.rglob("*.jpg"))[:8]  # Benign images: Benign calls, some without another flag
    predictor = load_predictor(None, threads=1)
    items = [predictor._decode_path(f) for f in files]
    predictor.realign, predictor.benign_check = None, None
    assert speed_e2e.review_view_passes(predictor, items) == 0
    # the check reads every Benign call that nothing else flags, at each of its views
    checked = sum(p.label == "Benign" and not p.review for p in predictor._finish(items, False))
    predictor.benign_check = BenignCheck((View(scale=2.0), View(scale=0.5)), threshold=0.999)
    assert checked > 0 and speed_e2e.review_view_passes(predictor, items) == 2 * checked / len(items)

"""The bundled model package: it loads offline, its files match their hashes, it carries the metrics its
model card quotes, and it flags images that are not blood smears instead of diagnosing them."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

import leukoscope
from leukoscope.data.classes import CANONICAL_CLASSES
from leukoscope.inference.package import bundled_package_path, verify_package
from tests.helpers.modelfixtures import smear_image

PACKAGE = bundled_package_path()
SPLIT = Path(__file__).resolve().parents[2] / "bundle" / "split.csv"


@pytest.fixture(scope="module")
def predictor():
    return leukoscope.load_model()


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_package_files_match_their_hashes_and_fit_the_size_budget() -> None:
    verify_package(PACKAGE)  # raises ModelError on any mismatch
    info = json.loads((PACKAGE / "model.json").read_text())
    total = sum((PACKAGE / name).stat().st_size for name in info["files"])
    assert total <= 15 * 1024 * 1024
    assert tuple(info["classes"]) == CANONICAL_CLASSES


def test_package_carries_test_metrics_with_intervals_and_a_model_card() -> None:
    info = json.loads((PACKAGE / "model.json").read_text())
    evaluation = info["metrics"]["evaluation"]
    assert evaluation["data_summary"]["part"] == "test"
    accuracy = evaluation["headline"]["accuracy"]
    assert accuracy["low"] <= accuracy["value"] <= accuracy["high"]
    card = (PACKAGE / "MODEL_CARD.md").read_text()
    assert "not a certified medical device" in card
    assert f"{accuracy['value']:.3f}" in card


def test_load_model_predicts_offline(predictor) -> None:
    assert predictor.classes == CANONICAL_CLASSES
    smear_like = smear_image(0, 1, size=224)  # a flat colour field would be unusable (no class): issue #11
    [result] = predictor.predict_bytes([("field.png", _png(smear_like))])
    assert result.error is None
    assert result.label in CANONICAL_CLASSES
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_non_smear_images_are_flagged_for_review(predictor) -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    solid = np.full((224, 224, 3), (40, 90, 200), np.uint8)
    text = Image.new("RGB", (224, 224), "white")
    ImageDraw.Draw(text).text((20, 100), "PATIENT REPORT 2024", fill="black")
    items = [("noise.png", _png(noise)), ("solid.png", _png(solid)), ("text.png", _png(np.asarray(text)))]
    for result in predictor.predict_bytes(items):
        assert result.review, f"{result.source} was not flagged: {result}"
        assert result.review_reasons


@pytest.mark.shared_data
def test_bundled_model_on_a_sample_of_its_test_part(predictor, shared_all: Path) -> None:
    with open(SPLIT, newline="") as handle:
        test = [row for row in csv.DictReader(handle) if row["part"] == "test"]
    sample = test[::12]  # 70 images, every class
    results = list(predictor.predict_paths([shared_all / row["path"] for row in sample]))
    accuracy = np.mean([r.label == row["label"] for r, row in zip(results, sample, strict=True)])
    assert accuracy >= 0.95
    flagged = np.mean([r.review for r in results])
    assert flagged <= 0.2  # ordinary images of the training distribution are mostly not flagged


def test_heavily_compressed_jpeg_is_flagged(predictor) -> None:
    field = Image.fromarray(smear_image(2, 1, size=224))  # noise would be unusable (no class): issue #11
    qualities = {}
    for quality in (10, 95):
        buffer = io.BytesIO()
        field.save(buffer, format="JPEG", quality=quality)
        [result] = predictor.predict_bytes([(f"q{quality}.jpg", buffer.getvalue())])
        qualities[quality] = "jpeg_quality" in result.review_codes
    assert qualities == {10: True, 95: False}

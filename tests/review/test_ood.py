"""Out-of-distribution scores: images unlike the training data must not pass as confident calls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from leukoscope.review.ood import MahalanobisOOD
from tests.helpers.images import png_bytes as png
from tests.helpers.modelfixtures import smear_image


def _text_image() -> Image.Image:
    image = Image.new("RGB", (64, 64), "white")
    draw = ImageDraw.Draw(image)
    for row in range(5):
        draw.text((2, 2 + 12 * row), "Lorem ipsum", fill="black")
    return image


def _non_smears() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    blurred = Image.fromarray(smear_image(1, 101)).filter(ImageFilter.GaussianBlur(3))
    other_stain = smear_image(2, 102)[..., [1, 2, 0]]  # another lab's colours: green background
    return {"noise": png(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)),
            "solid": png(np.full((64, 64, 3), (205, 120, 170), np.uint8)),
            "text": png(_text_image()), "blurred": png(blurred), "other stain": png(other_stain)}


def test_review_flag_fires_on_non_smear_images(predictor) -> None:
    names, data = zip(*_non_smears().items(), strict=True)
    results = dict(zip(names, predictor.predict_bytes(list(zip(names, data, strict=True))), strict=True))
    # Nothing to analyse: no class at all.
    assert (results["noise"].status, results["noise"].review_codes) == ("unusable", ["noise"])
    assert (results["solid"].status, results["solid"].review_codes) == ("unusable", ["uniform"])
    assert results["text"].status == "unusable" or "out_of_distribution" in results["text"].review_codes
    for name in ("blurred", "other stain"):
        p = results[name]
        # Not merely low confidence: flagged as unlike the training data or as a bad image.
        assert p.review and p.status == "ok", name
        assert {"out_of_distribution", "blurry"} & set(p.review_codes), (name, p.review_reasons)


def test_ood_and_quality_flags_spare_most_in_distribution_images(predictor) -> None:
    items = [(f"{c}-{i}", png(smear_image(c, 200 + i))) for c in range(4) for i in range(6)]
    predictions = predictor.predict_bytes(items)
    assert all(p.status == "ok" for p in predictions)
    flagged = [p for p in predictions if {"out_of_distribution", "blurry"} & set(p.review_codes)]
    assert len(flagged) <= len(predictions) // 4, [p.review_reasons for p in flagged]
    scores = [p.ood_score for p in predictions]
    assert np.median(scores) < predictor.ood.threshold


def test_mahalanobis_fit_score_threshold_and_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 5, size=(3, 16))
    labels = np.repeat(np.arange(3), 100)
    train = centres[labels] + rng.normal(size=(300, 16))
    ood = MahalanobisOOD.fit(train, labels, n_components=8)
    val = centres[labels] + rng.normal(size=(300, 16))
    threshold = ood.set_threshold(ood.score(val))
    assert 0.03 <= np.mean(ood.score(val) > threshold) <= 0.07
    far = rng.normal(0, 1, size=(20, 16)) + 40
    assert np.all(ood.score(far) > threshold)
    ood.save(tmp_path / "ood.npz")
    loaded = MahalanobisOOD.load(tmp_path / "ood.npz")
    assert loaded.threshold == threshold
    assert np.allclose(loaded.score(val[:10]), ood.score(val[:10]), rtol=1e-5)


def test_mahalanobis_with_missing_class_and_few_samples() -> None:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(6, 32))  # fewer samples than dimensions: shrinkage keeps it finite
    ood = MahalanobisOOD.fit(features, np.array([0, 0, 0, 2, 2, 2]))
    scores = ood.score(rng.normal(size=(4, 32)))
    assert np.all(np.isfinite(scores)) and ood.means.shape == (3, 32)
    with pytest.raises(ValueError, match="need"):
        MahalanobisOOD.fit(features[:1], np.array([0]))

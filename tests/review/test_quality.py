"""Image-quality checks: blank, noise and gradient images are unusable, blurry ones flagged, from pixels alone."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from leukoscope.inference.predictor import load_predictor
from leukoscope.review.quality import (
    QualityThresholds,
    cell_structure,
    fit_quality_thresholds,
    image_stats,
    neighbour_correlation,
    quality_reasons,
    size_reasons,
)
from tests.helpers.images import png_bytes as png
from tests.helpers.modelfixtures import smear_image


def test_quality_checks() -> None:
    smear = smear_image(0, 5)
    thresholds = fit_quality_thresholds(np.array([image_stats(smear_image(c, i)) for c in range(4) for i in range(5)]))
    assert quality_reasons(smear, thresholds) == []
    blurred = np.asarray(Image.fromarray(smear).filter(ImageFilter.GaussianBlur(3)))
    (reason,) = quality_reasons(blurred, thresholds)
    assert reason.code == "blurry" and not reason.unusable and reason.details["threshold"] > reason.details["sharpness"]
    (reason,) = quality_reasons(np.full((64, 64, 3), 200, np.uint8), thresholds)
    assert reason.code == "uniform" and reason.unusable and reason.details["contrast"] == 0.0
    assert QualityThresholds.from_dict(thresholds.to_dict()) == thresholds


def _gradient(size: int = 224, start=(255, 0, 0), end=(0, 0, 255)) -> np.ndarray:
    t = np.linspace(0, 1, size)[None, :, None] * np.ones((size, 1, 1))
    return (np.array(start) * (1 - t) + np.array(end) * t).astype(np.uint8)


def _resized(image: np.ndarray, size: int = 224) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))


@pytest.mark.parametrize(("name", "code"), [("white", "uniform"), ("black", "uniform"), ("noise", "noise"),
                                             ("small noise", "noise"), ("large noise", "noise"),
                                             ("grey noise", "noise"), ("gradient", "no_cells"),
                                             ("grey gradient", "no_cells"), ("radial", "no_cells")])
def test_images_without_cells_are_unusable(name: str, code: str) -> None:
    """The unusable checks are absolute (the defaults), so they hold for any model's thresholds."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[-1:1:224j, -1:1:224j]
    images = {
        "white": np.full((224, 224, 3), 255, np.uint8), "black": np.zeros((224, 224, 3), np.uint8),
        "noise": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
        "large noise": np.asarray(Image.fromarray(rng.integers(0, 256, (1000, 1000, 3), dtype=np.uint8)).resize(
            (224, 224), Image.Resampling.BICUBIC)),
        "grey noise": np.repeat(rng.integers(0, 256, (224, 224, 1), dtype=np.uint8), 3, axis=2),
        "gradient": _gradient(), "grey gradient": _gradient(start=(0, 0, 0), end=(255, 255, 255)),
        "radial": (np.hypot(xx, yy)[..., None] * np.array([120, 60, 200])).clip(0, 255).astype(np.uint8),
    }
    small = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)  # judged before upsampling smooths it
    rgb, native = (_resized(small), small) if name == "small noise" else (images[name], None)
    thresholds = QualityThresholds(sharpness=23.4, contrast=4.1)  # the bundled model's review values
    (reason,) = quality_reasons(rgb, thresholds, native=native)
    assert reason.code == code and reason.unusable and reason.details
    assert len(reason.message.split(": ")) >= 2  # plain words, then what to do


def test_unusable_images_get_no_class(predictor) -> None:
    rng = np.random.default_rng(1)
    items = [("white.png", png(np.full((64, 64, 3), 255, np.uint8))), ("dot.png", png(np.zeros((1, 1, 3), np.uint8))),
             ("noise.png", png(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))),
             ("gradient.png", png(_gradient(64))), ("smear.png", png(smear_image(1, 7)))]
    results = {p.source: p for p in predictor.predict_bytes(items)}
    for name in ("white.png", "dot.png", "noise.png", "gradient.png"):
        p = results[name]
        assert p.status == "unusable" and p.label is None and p.error is None and p.review, name
        assert p.confidence == 0.0 and set(p.probabilities.values()) == {0.0} and p.ood_score is None
        row = p.to_row()
        assert row["status"] == "unusable" and row["label"] == "" and row["review_codes"] == p.review_codes[0]
    assert results["dot.png"].review_codes == ["too_small"] and results["dot.png"].review_details["too_small"] == {
        "width": 1, "height": 1, "min_side": predictor.min_side}
    assert results["smear.png"].status == "ok" and results["smear.png"].label is not None


@pytest.mark.shared_data
@pytest.mark.slow
def test_no_image_of_the_dataset_is_unusable(shared_all: Path) -> None:
    """The false-unusable rate on all 2,796 ALL images is 0, with the bundled model's thresholds (the pixel
    checks decide before the model runs, so decoding alone is enough)."""
    bundled = load_predictor(threads=1)
    unusable = []
    for path in sorted(p for p in shared_all.rglob("*") if p.is_file()):
        item = bundled._decode(str(path), path.read_bytes())
        if item.error is None and item.pixels is None:
            unusable.append((path.name, item.reasons[0].code))
    assert unusable == []


def _reference_statistics(rgb: np.ndarray) -> dict[str, float]:
    """The four statistics computed the plain way, in float64 (the fast versions must agree)."""
    from scipy import ndimage

    g = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    pairs = [(g[:, 1:], g[:, :-1]), (g[1:, :], g[:-1, :])]
    correlation = np.mean([np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in pairs])
    side = min(g.shape)
    dog = ndimage.gaussian_filter(g, side / 112, mode="nearest") - ndimage.gaussian_filter(g, side / 28, mode="nearest")
    margin = int(side / 14)
    return {"contrast": g.std(), "sharpness": lap.var(), "correlation": correlation,
            "structure": dog[margin:-margin, margin:-margin].std()}


@pytest.mark.parametrize("shape", [(224, 224), (64, 64), (61, 90), (300, 257)])
def test_fast_statistics_agree_with_their_plain_definitions(shape: tuple[int, int]) -> None:
    """Grey image, sums and blurs are computed the fast way (flattened shifts, block means, small matrix
    products): contrast, sharpness and correlation must be the same numbers, the cell structure close."""
    rgb = np.asarray(Image.fromarray(smear_image(1, 3, 128)).resize(shape[::-1], Image.Resampling.BICUBIC))
    expected = _reference_statistics(rgb)
    sharpness, contrast = image_stats(rgb)
    assert contrast == pytest.approx(expected["contrast"], rel=1e-4)
    assert sharpness == pytest.approx(expected["sharpness"], rel=1e-4)
    assert neighbour_correlation(rgb) == pytest.approx(expected["correlation"], abs=1e-4)
    assert cell_structure(rgb) == pytest.approx(expected["structure"], rel=0.2)


def test_quality_checks_give_the_same_answers_from_many_threads() -> None:
    """The work images are per thread: concurrent decoders must not see each other's pixels."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(3)
    images = [smear_image(i % 4, i, 96) for i in range(12)] + [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)] * 4
    thresholds = QualityThresholds(sharpness=23.4, contrast=4.1)
    serial = [quality_reasons(image, thresholds) for image in images]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(5):
            assert list(pool.map(lambda image: quality_reasons(image, thresholds), images)) == serial


@pytest.mark.parametrize("orientation", [1, 6])
def test_jpeg_quality_read_from_the_decoded_image(orientation: int) -> None:
    """Prediction reads the quantisation tables that load_rgb kept (through EXIF rotation, draft decoding
    and reduction), not the file's header a second time: the same estimate either way."""
    from leukoscope.data.imaging import jpeg_quality, load_rgb

    exif = Image.Exif()
    exif[0x0112] = orientation
    for quality in (30, 90):
        buffer = io.BytesIO()
        Image.fromarray(smear_image(0, 4, 400)).save(buffer, "JPEG", quality=quality, exif=exif)
        data = buffer.getvalue()
        for max_side in (None, 100):
            assert jpeg_quality(load_rgb(data, max_side=max_side)) == pytest.approx(jpeg_quality(data))
        assert abs(jpeg_quality(data) - quality) < 3
    assert jpeg_quality(load_rgb(png(smear_image(0, 4)))) is None


@pytest.mark.parametrize(("width", "height", "codes"), [
    (224, 224, []), (112, 112, []), (896, 896, []), (224, 330, []),  # within the ranges: no reason
    (100, 100, ["small_image"]), (1000, 1000, ["large_image"]), (224, 400, ["not_square"]),
    (100, 400, ["small_image"]),  # the size reason comes first, one reason at most
])
def test_size_reasons(width: int, height: int, codes: list[str]) -> None:
    reasons = size_reasons(width, height, 224)
    assert [r.code for r in reasons] == codes
    assert all(r.details["width"] == width and r.details["height"] == height for r in reasons)
    assert size_reasons(100, 100, 224, (0.25, 4.0)) == []


@pytest.mark.parametrize("kind", ["uint8", "view", "rgba", "float"])
def test_grey_image_is_the_plain_float32_luma_to_the_bit(kind: str) -> None:
    """The grey image is made from contiguous channel planes: the same float32 products and sums, in the
    same order, as the plain per-channel formula, so every statistic is unchanged."""
    from leukoscope.review.quality import _gray

    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (67, 91, 4 if kind == "rgba" else 3), dtype=np.uint8)
    if kind == "view":
        rgb = rng.integers(0, 256, (140, 95, 3), dtype=np.uint8)[::2, 3:, ::-1]
    if kind == "float":
        rgb = rgb.astype(np.float32) * np.float32(0.9)
    f = rgb.astype(np.float32)
    expected = f[..., 0] * np.float32(0.299) + f[..., 1] * np.float32(0.587)
    expected += f[..., 2] * np.float32(0.114)
    assert np.array_equal(_gray(rgb), expected)
    out, spare = np.empty(rgb.shape[:2], np.float32), np.empty(rgb.shape[:2], np.float32)
    assert _gray(rgb, out, spare) is out and np.array_equal(out, expected)

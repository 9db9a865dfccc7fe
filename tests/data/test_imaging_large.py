"""imaging.load_rgb(..., max_side=...): huge images reduced while decoding, their own size still known
(issue #11 item 9: a 143 KB 7000x7000 PNG is 147 MB of pixels; its Grad-CAM took 2.6 GB)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from leukoscope.data.imaging import load_rgb, original_size
from leukoscope.errors import ImageError


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def pattern(width: int, height: int) -> np.ndarray:
    """Smooth colour ramps: a reduced decode must look like a resized full decode."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    return np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1).astype(np.uint8)


def test_a_7000_pixel_png_decodes_to_the_working_size_and_keeps_its_own_size() -> None:
    data = encode(Image.new("RGB", (7000, 7000), (200, 150, 210)), "PNG")
    assert len(data) < 400_000  # a small upload under the 50-megapixel limit
    image = load_rgb(data, max_side=1024)
    assert image.size == (1024, 1024) and image.mode == "RGB"
    assert original_size(image) == (7000, 7000)
    assert np.asarray(image)[500, 500].tolist() == [200, 150, 210]


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "I;16", "1", "CMYK"])
def test_every_mode_is_reduced_to_rgb(mode: str) -> None:
    source = Image.fromarray(pattern(3000, 1500)).convert("RGBA" if mode == "LA" else "RGB")
    image = source.convert(mode) if mode != "I;16" else Image.fromarray(
        np.asarray(source.convert("L"), dtype=np.uint16) * 257)
    fmt = "TIFF" if mode == "CMYK" else "PNG"
    result = load_rgb(encode(image, fmt), max_side=600)
    assert result.mode == "RGB" and result.size == (600, 300) and original_size(result) == (3000, 1500)


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_and_matches_a_full_decode() -> None:
    data = encode(Image.fromarray(pattern(4000, 3000)), "JPEG", quality=95)
    reduced = load_rgb(data, max_side=1000)
    assert reduced.size == (1000, 750) and original_size(reduced) == (4000, 3000)
    full = load_rgb(data).resize((1000, 750), Image.Resampling.LANCZOS)
    difference = np.abs(np.asarray(reduced, dtype=np.int16) - np.asarray(full, dtype=np.int16))
    assert difference.mean() < 2.0


def test_exif_rotation_is_applied_and_the_original_size_is_as_displayed() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(Image.fromarray(pattern(2000, 1000)), "JPEG", exif=exif.tobytes())
    assert load_rgb(data).size == (1000, 2000)
    reduced = load_rgb(data, max_side=500)
    assert reduced.size == (250, 500) and original_size(reduced) == (1000, 2000)


def test_small_images_and_the_default_are_unchanged() -> None:
    data = encode(Image.fromarray(pattern(300, 200)), "PNG")
    full = load_rgb(data)
    assert full.size == (300, 200) and original_size(full) == (300, 200)
    small = load_rgb(data, max_side=1024)
    assert small.size == (300, 200) and original_size(small) == (300, 200)
    assert np.array_equal(np.asarray(small), np.asarray(full))


def test_bad_files_are_still_one_line_errors_with_max_side() -> None:
    with pytest.raises(ImageError, match="not an image"):
        load_rgb(b"not an image", max_side=1024)
    with pytest.raises(ImageError, match="empty file"):
        load_rgb(b"", max_side=1024)
    truncated = encode(Image.fromarray(pattern(2000, 2000)), "JPEG")[:5000]
    with pytest.raises(ImageError):
        load_rgb(truncated, max_side=256)


def test_the_predictor_decodes_reduced_and_reports_and_checks_the_files_own_size(predictor, monkeypatch) -> None:
    import leukoscope.inference.predictor as inference
    from tests.helpers.modelfixtures import smear_image

    calls: list[dict] = []
    real = inference.load_rgb
    monkeypatch.setattr(inference, "load_rgb", lambda data, **kw: calls.append(kw) or real(data, **kw))
    big = encode(Image.fromarray(smear_image(3, 5)).resize((2400, 2400)), "PNG")
    [prediction] = predictor.predict_bytes([("big.png", big)])
    side = inference.DECODE_SIDE_FACTOR * predictor.preprocess.input_size
    assert calls == [{"max_side": side}] and side < 2400
    assert (prediction.width, prediction.height) == (2400, 2400)
    assert "large_image" in prediction.review_codes  # the size check saw the real size, not the decoded one

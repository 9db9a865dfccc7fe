"""Safe decoding: odd but valid images become 8-bit RGB; every bad file becomes a one-line ImageError."""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leukoscope.data.imaging import MAX_PIXELS, is_image_path, load_rgb, load_rgb_array, read_info
from leukoscope.errors import ImageError


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A valid tiny PNG whose IHDR (with a correct CRC) claims width x height RGBA pixels."""
    data = bytearray(encode(Image.new("RGBA", (1, 1)), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def refused(source) -> str:
    """The one-line ImageError message load_rgb gives for `source`."""
    with pytest.raises(ImageError) as info:
        load_rgb(source)
    message = str(info.value)
    assert message and "\n" not in message
    return message


# ------------------------------------------------------------------------------------------- good images


def test_jpeg_from_path_and_from_bytes_give_the_same_rgb(tmp_path: Path, image_bytes) -> None:
    data = image_bytes(seed=1, size=32)
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    from_path, from_bytes = load_rgb(path), load_rgb(data)
    assert from_path.mode == "RGB" and from_path.size == (32, 32)
    assert np.array_equal(np.asarray(from_path), np.asarray(from_bytes))


def test_grayscale_becomes_rgb_with_equal_channels(image_bytes) -> None:
    image = load_rgb(image_bytes(mode="L", fmt="PNG"))
    array = np.asarray(image)
    assert image.mode == "RGB"
    assert np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 1], array[..., 2])


def test_rgba_is_composited_on_white() -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque: kept
    rgba[1, 1] = (10, 20, 30, 0)  # transparent: white background
    image = load_rgb(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    array = np.asarray(image)
    assert image.mode == "RGB"
    assert tuple(array[0, 0]) == (10, 20, 30)
    assert tuple(array[1, 1]) == (255, 255, 255)


def test_palette_with_transparency_is_composited_on_white() -> None:
    palette_image = Image.new("P", (2, 1))
    palette_image.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    palette_image.putdata([0, 1])
    data = encode(palette_image, "PNG", transparency=0)
    array = np.asarray(load_rgb(data))
    assert tuple(array[0, 0]) == (255, 255, 255)
    assert tuple(array[0, 1]) == (255, 0, 0)


def test_16_bit_png_is_scaled_not_clipped() -> None:
    # all values above 255, so clipping would give a flat white image
    values = np.linspace(1000, 2000, 64, dtype=np.uint16).reshape(8, 8)
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"  # really a 16-bit image
    array = np.asarray(load_rgb(data))
    assert array.dtype == np.uint8 and array.shape == (8, 8, 3)
    assert array.min() == 0 and array.max() == 255
    assert np.all(np.diff(array[..., 0].ravel().astype(int)) >= 0)  # order of values preserved


def test_16_bit_constant_image_does_not_divide_by_zero() -> None:
    data = encode(Image.fromarray(np.full((4, 4), 40000, dtype=np.uint16)), "PNG")
    assert np.asarray(load_rgb(data)).shape == (4, 4, 3)


def test_cmyk_jpeg_becomes_rgb_with_its_colours() -> None:
    red = Image.new("RGB", (16, 16), (220, 30, 30)).convert("CMYK")
    data = encode(red, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    pixel = np.asarray(load_rgb(data))[8, 8].astype(int)
    assert pixel[0] > 180 and pixel[1] < 80 and pixel[2] < 80


def test_exif_orientation_is_applied() -> None:
    # 40 wide x 20 high: left half red, right half blue; orientation 6 = "rotate 90 degrees clockwise to show"
    array = np.zeros((20, 40, 3), dtype=np.uint8)
    array[:, :20] = (255, 0, 0)
    array[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(array), "JPEG", exif=exif.tobytes(), quality=95)
    assert read_info(data).width == 40  # the header still says landscape
    image = load_rgb(data)
    assert image.size == (20, 40)  # shown upright: portrait
    shown = np.asarray(image).astype(int)
    top, bottom = shown[5, 10], shown[35, 10]
    assert top[0] > 200 and top[2] < 60  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_read_info_reads_the_header(image_bytes) -> None:
    info = read_info(image_bytes(size=48, mode="L", fmt="PNG"))
    assert (info.width, info.height, info.mode, info.format) == (48, 48, "L", "PNG")


def test_load_rgb_array_resizes_to_a_square_uint8_array(image_bytes) -> None:
    data = image_bytes(size=40)
    assert load_rgb_array(data).shape == (40, 40, 3)
    resized = load_rgb_array(data, size=16)
    assert resized.shape == (16, 16, 3) and resized.dtype == np.uint8


@pytest.mark.parametrize(
    ("name", "expected"),
    [("a.JPG", True), ("b.jpeg", True), ("c.tiff", True), ("d.txt", False), ("e", False)],
)
def test_is_image_path(name: str, expected: bool) -> None:
    assert is_image_path(Path(name)) is expected


# -------------------------------------------------------------------------------------------- bad files


def test_zero_byte_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert "empty file" in refused(path)
    assert "empty file" in refused(b"")


def test_text_file_named_jpg_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("patient list, not an image\n")
    assert "not an image" in refused(path)
    with pytest.raises(ImageError, match="not an image"):
        read_info(path)


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_jpeg_is_refused(keep: float, image_bytes) -> None:
    data = image_bytes(seed=3, size=64)
    message = refused(data[: int(len(data) * keep)])
    assert "truncated" in message


def test_png_claiming_30000_squared_pixels_is_refused_before_decoding() -> None:
    data = png_claiming(30000, 30000)  # 3.6 GB if decoded; the file is under 100 bytes
    assert len(data) < 100
    assert "too large" in refused(data)
    with pytest.raises(ImageError, match="too large"):
        read_info(data)


def test_own_pixel_limit_is_below_pillows() -> None:
    # 56 megapixels: over our limit, under Pillow's own threshold, so only our guard can refuse it (and if
    # it ever stopped refusing, decoding would need ~224 MB, not gigabytes)
    width, height = 8000, 7000
    assert width * height > MAX_PIXELS
    assert width * height < (Image.MAX_IMAGE_PIXELS or 0)
    message = refused(png_claiming(width, height))
    assert "8000x7000" in message


def test_missing_file_is_refused(tmp_path: Path) -> None:
    assert "cannot read file" in refused(tmp_path / "nowhere.jpg")


def test_symlink_to_itself_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "x.jpg"
    link.symlink_to(link.name)
    message = refused(link)
    assert "cannot read file" in message and "symbolic link" in message.lower()


def test_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    refused(folder)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_refused(tmp_path: Path, image_bytes) -> None:
    path = tmp_path / "locked.jpg"
    path.write_bytes(image_bytes())
    path.chmod(0)
    try:
        assert "permission denied" in refused(path)
    finally:
        path.chmod(0o644)


def test_corrupted_bytes_never_escape_as_other_exceptions(image_bytes) -> None:
    """Random byte damage to real files: each decodes or raises ImageError, never anything else."""
    rng = np.random.default_rng(7)
    formats = [("RGB", "JPEG"), ("RGBA", "PNG"), ("RGB", "BMP"), ("RGB", "TIFF"), ("P", "GIF")]
    originals = [image_bytes(seed=5, size=24, mode=m, fmt=f) for m, f in formats]
    outcomes = {"decoded": 0, "refused": 0}
    for original in originals:
        for k in range(40):
            damaged = bytearray(original)
            for _ in range(int(rng.integers(1, 6))):
                damaged[int(rng.integers(0, len(damaged)))] = int(rng.integers(0, 256))
            if k % 3 == 0:
                damaged = damaged[: int(rng.integers(1, len(damaged)))]
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # Pillow's notes on damaged metadata
                    read_info(bytes(damaged))
                    load_rgb(bytes(damaged))
                outcomes["decoded"] += 1
            except ImageError as exc:
                assert "\n" not in str(exc)
                outcomes["refused"] += 1
    assert outcomes["refused"] > 0 and outcomes["decoded"] > 0



def test_jpeg_quality_estimates_the_encoders_setting() -> None:
    from leukoscope.data.imaging import jpeg_quality

    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    for quality in (10, 50, 90):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        assert abs(jpeg_quality(buffer.getvalue()) - quality) < 3
    png = io.BytesIO()
    image.save(png, format="PNG")
    assert jpeg_quality(png.getvalue()) is None
    assert jpeg_quality(b"not an image") is None

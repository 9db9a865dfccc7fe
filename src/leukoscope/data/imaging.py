"""Safe image decoding: every way a file can be bad becomes an `ImageError` with a one-line reason.

Lab folders hold whatever a microscope PC wrote: truncated JPEGs from interrupted copies, zero-byte files,
RGBA PNG screenshots, 16-bit TIFFs, CMYK scans, phone photos with EXIF rotation and, from the internet,
decompression bombs. Decoding is the one place all of these are handled, so data checks, training,
prediction and the web app all behave the same.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from leukoscope.errors import ImageError

MAX_PIXELS = 50_000_000  # refuse larger images before decoding (decompression-bomb guard)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


@dataclass(frozen=True)
class ImageInfo:
    """What the header says about an image, read without decoding the pixels."""

    width: int
    height: int
    mode: str
    format: str


def _open(source: str | Path | bytes) -> Image.Image:
    if isinstance(source, bytes | bytearray):
        if not source:
            raise ImageError("empty file (0 bytes)")
        return Image.open(io.BytesIO(source))
    path = Path(source)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror or exc}") from None
    if size == 0:
        raise ImageError("empty file (0 bytes)")
    return Image.open(path)


def _check_pixels(image: Image.Image) -> None:
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"image too large ({width}x{height} = {width * height / 1e6:.0f} megapixels; "
            f"limit {MAX_PIXELS / 1e6:.0f}): refused as a possible decompression bomb"
        )
    if width < 1 or height < 1:
        raise ImageError(f"image has no pixels ({width}x{height})")


@contextlib.contextmanager
def _opened(source: str | Path | bytes, what: str) -> Iterator[Image.Image]:
    """Open an image with the pixel limit checked, turning every decoder failure into an ImageError.

    `what` names the step for the generic message ("cannot read image" for headers, "corrupt image" for
    full decodes), so both entry points report the same reasons for the same bad files.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _open(source) as image:
                _check_pixels(image)
                yield image
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError("image too large: refused as a possible decompression bomb") from None
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised file format)") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except OSError as exc:
        if "truncated" in str(exc).lower():
            raise ImageError("truncated image (file ends before the image data does)") from None
        raise ImageError(f"{what}: {exc}") from None
    except (ValueError, SyntaxError) as exc:
        raise ImageError(f"corrupt image: {exc}") from None


def read_info(source: str | Path | bytes) -> ImageInfo:
    """Read the header only (fast); raises ImageError for files that are not images or are too large."""
    with _opened(source, "cannot read image") as image:
        return ImageInfo(image.size[0], image.size[1], image.mode, image.format or "?")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; 16-bit and float data are scaled, not clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        lo, hi = float(array.min()), float(array.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        image = Image.fromarray(((array - lo) * scale).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def load_rgb(source: str | Path | bytes, *, max_side: int | None = None) -> Image.Image:
    """Decode an image as 8-bit RGB, applying its EXIF orientation.

    Raises ImageError with a one-line reason for zero-byte, truncated, non-image, unreadable or oversized
    files. Transparent images are composited on white (the colour of an empty slide background).

    With `max_side`, the image is made no larger than max_side x max_side (aspect kept) as early as the
    format allows: JPEGs decode at 1/2, 1/4 or 1/8 scale (Pillow `draft`), other formats are box-reduced
    by an integer factor right after decoding, before any conversion, then resized. A 143 KB 7000x7000 PNG
    is 147 MB of RGB; everything after decoding (Grad-CAM, thumbnails, display) then works on a few MB.
    The size before reduction stays readable through `original_size(image)` (None: full decode, as before).
    """
    with _opened(source, "corrupt image") as image:
        _keep_quantization(image)
        width, height = image.size
        if max_side is None:
            image.load()
            return _to_rgb(ImageOps.exif_transpose(image) or image)
        if image.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8):  # turned by 90 degrees
            width, height = height, width
        if max(width, height) > max_side:
            image.draft(None, (max_side, max_side))  # JPEG only (a no-op elsewhere); keeps >= max_side
        image.load()
        image = _reduce(image, max_side)  # before exif_transpose, which copies the image it is given
        rgb = _to_rgb(ImageOps.exif_transpose(image) or image)
        if max(rgb.size) > max_side:
            rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        rgb.info["original_size"] = (width, height)
        return rgb


def _reduce(image: Image.Image, max_side: int) -> Image.Image:
    """Integer box reduction to no less than max_side: cheap, and done before a mode conversion multiplies
    the memory. Modes Pillow cannot reduce (P, 1, I;16) are converted first, 16-bit to 32-bit integers
    rather than to _to_rgb's float64 (which would need 8 bytes a pixel at full size)."""
    factor = max(image.size) // max_side
    if factor < 2:
        return image
    try:
        return image.reduce(factor)
    except ValueError:
        return (image.convert("I") if image.mode.startswith("I;16") else _to_rgb(image)).reduce(factor)


def original_size(image: Image.Image) -> tuple[int, int]:
    """Width and height of the decoded file before `load_rgb(..., max_side=...)` reduced it."""
    size = image.info.get("original_size")
    return (int(size[0]), int(size[1])) if size else image.size


def load_rgb_array(source: str | Path | bytes, size: int | None = None) -> np.ndarray:
    """Decode to an HxWx3 uint8 array, optionally resized (bilinear, antialiased) to size x size."""
    image = load_rgb(source)
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


# IJG's standard luminance quantisation table (quality 50), in the zig-zag order PIL reports.
_IJG_LUMINANCE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64)


_QUANTIZATION = "leukoscope_jpeg_quantization"  # image.info key: the file's tables, through every conversion


def _keep_quantization(image: Image.Image) -> None:
    """Copy a JPEG's quantisation tables into `info`, which Pillow carries over to converted, reduced and
    transposed copies (the tables themselves live only on the opened file), for `jpeg_quality(image)`."""
    tables = getattr(image, "quantization", None) if image.format == "JPEG" else None
    if tables:
        image.info[_QUANTIZATION] = tables


def jpeg_quality(data: bytes | Image.Image) -> float | None:
    """Estimated IJG quality (1-100) of a JPEG from its luminance quantisation table; None for other files.

    Heavy compression wipes out the chromatin texture that separates the subtypes (benchmarks/shift.py
    measures it), so prediction flags such files for review instead of trusting them. Given an image from
    `load_rgb`, the tables it kept are used instead of parsing the file's header again.
    """
    if isinstance(data, Image.Image):
        return _quality_from_tables(data.info.get(_QUANTIZATION))
    try:
        with Image.open(io.BytesIO(data)) as image:
            tables = getattr(image, "quantization", None) if image.format == "JPEG" else None
    except Exception:  # a header we cannot read says nothing about compression
        return None
    return _quality_from_tables(tables)


def _quality_from_tables(tables: dict | None) -> float | None:
    if not tables or 0 not in tables or len(tables[0]) != 64:
        return None
    scale = float(np.mean(np.asarray(tables[0], dtype=np.float64) / _IJG_LUMINANCE)) * 100
    return 5000.0 / scale if scale > 100 else (200.0 - scale) / 2

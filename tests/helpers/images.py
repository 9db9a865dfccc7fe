"""Deterministic generated images and datasets for tests: colour noise with a mean colour per class."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_ALL = (REPO_ROOT / ".." / "shared" / "data" / "ALL").resolve()
SHARED_ALL_MISSING = "../shared/data/ALL not present (only on CI and dev machines)"

ALL_FOLDERS: tuple[str, ...] = ("Benign", "Early", "Pre", "Pro")
# Mean colour of each class's noise (stain-like hues), so tiny models have something to learn.
_CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (200, 160, 190), (150, 90, 170), (110, 60, 150), (180, 120, 110), (90, 140, 200), (160, 200, 120),
)


def noise_array(seed: int, size: int = 64, colour: Sequence[int] = (128, 128, 128), spread: int = 60):
    """A size x size x 3 uint8 array of colour noise around `colour`; the same seed gives the same pixels."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(-spread, spread + 1, size=(size, size, 3))
    return np.clip(np.asarray(colour)[None, None, :] + noise, 0, 255).astype(np.uint8)


def noise_image_bytes(seed: int = 0, size: int = 64, mode: str = "RGB", fmt: str = "JPEG") -> bytes:
    """One encoded noise image; `mode` is a PIL mode (RGB, L, RGBA, CMYK, I;16, ...)."""
    array = noise_array(seed, size)
    if mode == "I;16":  # 16-bit grayscale: Pillow makes it from a uint16 array
        array = array[..., 0].astype(np.uint16) * 257
    image = Image.fromarray(array) if mode == "I;16" else Image.fromarray(array).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def build_dataset(
    root: Path,
    folders: Sequence[str] = ALL_FOLDERS,
    *,
    per_class: int = 6,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """Write `per_class` noise JPEGs into root/<folder>/ for every folder; returns root."""
    for k, folder in enumerate(folders):
        class_dir = root / folder
        class_dir.mkdir(parents=True, exist_ok=True)
        colour = _CLASS_COLOURS[k % len(_CLASS_COLOURS)]
        for i in range(per_class):
            array = noise_array(seed * 100_003 + k * 1_000 + i, size, colour)
            stem = re.sub(r"[^A-Za-z0-9-]+", "_", folder).strip("_")
            Image.fromarray(array).save(class_dir / f"{stem}-{i:03d}.jpg")
    return root


def png_bytes(image: np.ndarray | Image.Image) -> bytes:
    """An array or PIL image encoded as PNG (lossless: the decoded pixels are the given ones)."""
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, "PNG")
    return buffer.getvalue()

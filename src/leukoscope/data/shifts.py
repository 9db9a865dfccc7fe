"""A second lab's images, simulated: a seeded family of stain, optics and camera transforms with ranges.

Another laboratory photographs the same kind of smear with another stain batch or recipe, another
objective and another camera. The shifted validation sets (to choose review rules), the shift benchmark
(`benchmarks/shift.py`) and the simulated second lab all draw from this one family, so every number about
robustness refers to the same documented ranges (`RANGES`):

- stain hue rotation (`hue_degrees`, -20..+20): another stain recipe (Wright instead of May-Gruenwald-Giemsa);
- stain amount in a deconvolved H&E space (`stain_h`, `stain_e`, x0.7..x1.3 each; Ruifrok and Johnston's
  colour deconvolution as scikit-image's `rgb2hed`/`hed2rgb` do it): a darker or paler stain batch, more or
  less of one dye;
- magnification (`magnification`, x0.5..x2, log-uniform when sampled), keeping the cells: zooming in crops
  the centre and resizes it back; zooming out shrinks the field and pads it with the background colour
  (the image's median colour: most pixels of a smear field are plasma);
- defocus (`blur_sigma`, Gaussian, 0..1.5 px of the image's own resolution);
- camera white balance (`gain_r`, `gain_b`, x0.85..x1.15, green fixed);
- JPEG re-compression (`jpeg_quality`, 50..95): another camera's or export's encoder.

They apply in that order (slide, then optics, then camera). `sample_shift(rng)` draws one composite shift
with every component active; `NAMED` holds fixed shifts at the ends of each range, for per-shift reports.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

RGB_FROM_HED = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))  # skimage.color.rgb_from_hed
LOG_ADJUST = math.log(1e-6)  # skimage's optical-density scale: an amount of 1 is a transmission of 1e-6

RANGES: dict[str, tuple[float, float]] = {
    "hue_degrees": (-20.0, 20.0),
    "stain_h": (0.7, 1.3),
    "stain_e": (0.7, 1.3),
    "magnification": (0.5, 2.0),
    "blur_sigma": (0.0, 1.5),
    "gain_r": (0.85, 1.15),
    "gain_b": (0.85, 1.15),
    "jpeg_quality": (50.0, 95.0),
}


@dataclass(frozen=True)
class Shift:
    """One composite transform; the defaults change nothing (`jpeg_quality` None: saved losslessly)."""

    hue_degrees: float = 0.0
    stain_h: float = 1.0
    stain_e: float = 1.0
    magnification: float = 1.0
    blur_sigma: float = 0.0
    gain_r: float = 1.0
    gain_b: float = 1.0
    jpeg_quality: int | None = None

    def __post_init__(self) -> None:
        for name, (low, high) in RANGES.items():
            value = getattr(self, name)
            if value is not None and not low - 1e-9 <= float(value) <= high + 1e-9:
                raise ValueError(f"{name}={value} is outside the family's range [{low:g}, {high:g}]")

    def apply(self, image: Image.Image) -> Image.Image:
        """The image as the other lab would see it (RGB, same size; JPEG applied as encode + decode)."""
        image = image.convert("RGB")
        if (self.stain_h, self.stain_e) != (1.0, 1.0):
            image = stain_jitter(image, self.stain_h, self.stain_e)
        if self.hue_degrees:
            image = rotate_hue(image, self.hue_degrees)
        if self.magnification != 1.0:
            image = magnify(image, self.magnification)
        if self.blur_sigma > 0:
            image = image.filter(ImageFilter.GaussianBlur(self.blur_sigma))
        if (self.gain_r, self.gain_b) != (1.0, 1.0):
            image = white_balance(image, (self.gain_r, 1.0, self.gain_b))
        if self.jpeg_quality is not None:
            image = Image.open(io.BytesIO(jpeg_bytes(image, self.jpeg_quality))).convert("RGB")
        return image

    def encode(self, image: Image.Image) -> bytes:
        """The file the other lab would send: JPEG at `jpeg_quality`, else PNG (lossless)."""
        optics = Shift(**{**asdict(self), "jpeg_quality": None}).apply(image)
        if self.jpeg_quality is not None:
            return jpeg_bytes(optics, self.jpeg_quality)
        buffer = io.BytesIO()
        optics.save(buffer, format="PNG")
        return buffer.getvalue()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """Short words for the components that are active ("none" for the identity)."""
        parts = []
        if self.hue_degrees:
            parts.append(f"hue {self.hue_degrees:+.0f} deg")
        if (self.stain_h, self.stain_e) != (1.0, 1.0):
            parts.append(f"stain H x{self.stain_h:.2f} E x{self.stain_e:.2f}")
        if self.magnification != 1.0:
            parts.append(f"magnification x{self.magnification:.2f}")
        if self.blur_sigma > 0:
            parts.append(f"blur sigma {self.blur_sigma:.2f} px")
        if (self.gain_r, self.gain_b) != (1.0, 1.0):
            parts.append(f"white balance R x{self.gain_r:.2f} B x{self.gain_b:.2f}")
        if self.jpeg_quality is not None:
            parts.append(f"JPEG q{self.jpeg_quality}")
        return ", ".join(parts) or "none"


# ------------------------------------------------------------------------------------------- components


def rotate_hue(image: Image.Image, degrees: float) -> Image.Image:
    """Rotate every pixel's hue by `degrees` (PIL's 8-bit HSV, 256 steps a turn)."""
    hsv = np.asarray(image.convert("RGB").convert("HSV"), dtype=np.int16).copy()
    hsv[..., 0] = (hsv[..., 0] + round(degrees / 360 * 256)) % 256
    return Image.fromarray(hsv.astype(np.uint8), mode="HSV").convert("RGB")


def stain_jitter(image: Image.Image, h: float, e: float, d: float = 1.0) -> Image.Image:
    """Scale the haematoxylin, eosin and DAB amounts of colour deconvolution (Ruifrok and Johnston; the
    matrices and optical-density scaling of skimage.color.rgb2hed / hed2rgb, without their clipping of
    negative amounts, so that factors of 1 give the image back)."""
    rgb_from_hed = np.asarray(RGB_FROM_HED)
    od = np.log(np.maximum(np.asarray(image.convert("RGB"), np.float64) / 255, 1e-6)) / LOG_ADJUST
    hed = od @ np.linalg.inv(rgb_from_hed) * np.asarray([h, e, d])
    rgb = np.exp(-(hed * -LOG_ADJUST) @ rgb_from_hed)
    return Image.fromarray(np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8))


def background_colour(image: Image.Image) -> tuple[int, int, int]:
    """The median colour: in a smear field most pixels are plasma between the cells."""
    array = np.asarray(image.convert("RGB")).reshape(-1, 3)
    return tuple(int(v) for v in np.median(array, axis=0))  # type: ignore[return-value]


def magnify(image: Image.Image, factor: float) -> Image.Image:
    """The field at `factor` x the magnification, same pixel size: > 1 crops the centre 1/factor and resizes
    it back (bicubic); < 1 shrinks the whole field (Lanczos) and pads it with the background colour."""
    image = image.convert("RGB")
    width, height = image.size
    if factor >= 1.0:
        w, h = width / factor, height / factor
        box = ((width - w) / 2, (height - h) / 2, (width + w) / 2, (height + h) / 2)
        return image.resize((width, height), Image.Resampling.BICUBIC, box=box)
    small = image.resize((max(1, round(width * factor)), max(1, round(height * factor))), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (width, height), background_colour(image))
    canvas.paste(small, ((width - small.width) // 2, (height - small.height) // 2))
    return canvas


def white_balance(image: Image.Image, gains: tuple[float, float, float]) -> Image.Image:
    """Per-channel camera gains (R, G, B), clipped to 8 bits."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) * np.asarray(gains, np.float32)
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8))


def jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    """A baseline JPEG (PIL's default 4:2:0 chroma subsampling, as most cameras write)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=int(quality))
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------- family


def sample_shift(rng: np.random.Generator) -> Shift:
    """One composite shift with every component drawn from RANGES (magnification log-uniform)."""
    low, high = RANGES["magnification"]
    return Shift(hue_degrees=float(rng.uniform(*RANGES["hue_degrees"])),
                 stain_h=float(rng.uniform(*RANGES["stain_h"])), stain_e=float(rng.uniform(*RANGES["stain_e"])),
                 magnification=float(math.exp(rng.uniform(math.log(low), math.log(high)))),
                 blur_sigma=float(rng.uniform(*RANGES["blur_sigma"])),
                 gain_r=float(rng.uniform(*RANGES["gain_r"])), gain_b=float(rng.uniform(*RANGES["gain_b"])),
                 jpeg_quality=int(rng.integers(int(RANGES["jpeg_quality"][0]), int(RANGES["jpeg_quality"][1]) + 1)))


def sample_shifts(n: int, seed: int) -> list[Shift]:
    """`n` composite shifts from one seeded generator (the same list for the same seed)."""
    rng = np.random.default_rng(seed)
    return [sample_shift(rng) for _ in range(n)]


NAMED: dict[str, Shift] = {
    "hue -20 deg": Shift(hue_degrees=-20.0),
    "hue +20 deg": Shift(hue_degrees=20.0),
    "stain H x1.3, E x0.7": Shift(stain_h=1.3, stain_e=0.7),
    "stain H x0.7, E x1.3": Shift(stain_h=0.7, stain_e=1.3),
    "stain darker (H, E x1.3)": Shift(stain_h=1.3, stain_e=1.3),
    "stain paler (H, E x0.7)": Shift(stain_h=0.7, stain_e=0.7),
    "magnification x0.5": Shift(magnification=0.5),
    "magnification x2": Shift(magnification=2.0),
    "blur sigma 1.5 px": Shift(blur_sigma=1.5),
    "white balance warm (R x1.15, B x0.85)": Shift(gain_r=1.15, gain_b=0.85),
    "white balance cool (R x0.85, B x1.15)": Shift(gain_r=0.85, gain_b=1.15),
    "JPEG quality 50": Shift(jpeg_quality=50),
    "hue -20 deg + magnification x2 + JPEG 50": Shift(hue_degrees=-20.0, magnification=2.0, jpeg_quality=50),
}
HUE_SHIFTS = ("hue -20 deg", "hue +20 deg")
MAGNIFICATION_SHIFTS = ("magnification x0.5", "magnification x2")


VALIDATION_COMPOSITES = 4  # copies of the val part with a random composite shift per image
VALIDATION_SEED = 1000  # composite k of a validation set uses seed VALIDATION_SEED + k (benchmarks use 0, 1, ...)


def validation_shifts(n_images: int, *, composites: int = VALIDATION_COMPOSITES,
                      seed: int = VALIDATION_SEED) -> dict[str, list[Shift]]:
    """The shifted validation set's copies, by name, one Shift per image: "none" (the images as they are),
    every NAMED shift, and `composites` copies "composite k" whose images each get their own random shift
    (sample_shifts(n_images, seed + k))."""
    copies = {"none": [Shift()] * n_images}
    copies.update({name: [shift] * n_images for name, shift in NAMED.items()})
    copies.update({f"composite {k}": sample_shifts(n_images, seed + k) for k in range(composites)})
    return copies


def encode_all(images: Iterable[Image.Image], shifts: Iterable[Shift]) -> list[bytes]:
    """Each image through its own shift, as the files the other lab would send."""
    return [shift.encode(image) for image, shift in zip(images, shifts, strict=True)]

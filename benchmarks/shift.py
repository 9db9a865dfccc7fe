"""How the review flag behaves when images stop looking like the training images.

No images of normal lymphocytes from another lab ship with this project, so this measures proxies on the
bundled model: the test part of bundle/split.csv (838 images) as it is, with stain / optics changes
applied (colour shifts, blur, heavy JPEG compression, grayscale), and the dataset authors' own
background-removed versions of the same images (ALL_segmented). The number that matters for safety is the
share of *confident wrong calls* (wrong and not flagged), and for benign images the share called leukemia
without a flag.

    .venv/bin/python -m benchmarks.shift
"""

from __future__ import annotations

import argparse
import csv
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from benchmarks.common import DATA, SPLIT, command_line, section_header, table, write_section

SEGMENTED = DATA.parent / "ALL_segmented"


def _jpeg(image: Image.Image, quality: int) -> bytes:
    """The file a camera or a careless export would write (kept as JPEG bytes, as a user's file is)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _tint(image: Image.Image, gains: tuple[float, float, float]) -> Image.Image:
    array = np.asarray(image, dtype=np.float32) * np.asarray(gains, np.float32)
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


def _hue(image: Image.Image, degrees: float) -> Image.Image:
    """Rotate every pixel's hue: another stain recipe (e.g. Wright instead of May-Gruenwald-Giemsa)."""
    hsv = np.asarray(image.convert("HSV"), dtype=np.int16)
    hsv[..., 0] = (hsv[..., 0] + round(degrees / 360 * 256)) % 256
    return Image.fromarray(hsv.astype(np.uint8), mode="HSV").convert("RGB")


def _zoom(image: Image.Image, factor: float) -> Image.Image:
    """The centre 1/factor of the field at the original size: a higher magnification or a single-cell crop."""
    width, height = image.size
    w, h = width / factor, height / factor
    box = ((width - w) / 2, (height - h) / 2, (width + w) / 2, (height + h) / 2)
    return image.resize((width, height), Image.Resampling.BICUBIC, box=box)


SHIFTS: dict[str, Callable[[Image.Image], Image.Image | bytes]] = {
    "none (test part as is)": lambda im: im,
    "warmer stain (R x1.15, B x0.85)": lambda im: _tint(im, (1.15, 1.0, 0.85)),
    "bluer stain (R x0.85, B x1.15)": lambda im: _tint(im, (0.85, 1.0, 1.15)),
    "paler stain (saturation x0.5)": lambda im: ImageEnhance.Color(im).enhance(0.5),
    "stronger stain (saturation x1.8)": lambda im: ImageEnhance.Color(im).enhance(1.8),
    "darker exposure (x0.6)": lambda im: ImageEnhance.Brightness(im).enhance(0.6),
    "out of focus (Gaussian blur r=3)": lambda im: im.filter(ImageFilter.GaussianBlur(3)),
    "heavy JPEG (quality 10)": lambda im: _jpeg(im, 10),
    "grayscale camera": lambda im: im.convert("L").convert("RGB"),
    "other stain hue (rotated +20 degrees)": lambda im: _hue(im, 20),
    "other stain hue (rotated -20 degrees)": lambda im: _hue(im, -20),
    "higher magnification / cell crop (centre, zoom x2)": lambda im: _zoom(im, 2.0),
}


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def score(predictor, items: list[tuple[str, bytes]], labels: list[str]) -> list[object]:
    """One table row: the review-flag counts `leukoscope evaluate` reports, on shifted images."""
    from leukoscope.review.metrics import review_summary

    results = predictor.predict_bytes(items)
    classes = list(predictor.classes)
    y = [classes.index(label) for label in labels]
    predicted = [classes.index(r.label) if r.label is not None else -1 for r in results]
    summary = review_summary(y, predicted, [r.review for r in results], [r.review_codes for r in results],
                             classes=classes)
    n = summary["n"]
    return [n, f"{(n - summary['wrong']) / n:.3f}", f"{summary['flagged_fraction']:.3f}",
            f"{summary['wrong_not_flagged'] / n:.3f}",
            f"{summary['benign_called_leukemia_not_flagged']} of {summary['n_benign']}",
            f"{summary['leukemia_called_benign_not_flagged']} of {summary['n_leukemia']}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model package (default: the bundled one)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--results", type=Path, default=None, help="RESULTS.md to update (default: benchmarks/)")
    args = parser.parse_args()
    import leukoscope

    predictor = leukoscope.load_model(args.model)
    with open(SPLIT, newline="") as handle:
        test = [row for row in csv.DictReader(handle) if row["part"] == "test"]
    labels = [row["label"] for row in test]
    originals = [Image.open(DATA / row["path"]).convert("RGB") for row in test]
    rows = []
    for name, shift in SHIFTS.items():
        shifted = [shift(image) for image in originals]
        items = [(row["path"], data if isinstance(data, bytes) else _png(data)) for row, data in zip(test, shifted, strict=True)]
        rows.append([name, *score(predictor, items, labels)])
        print(rows[-1], flush=True)
    if SEGMENTED.is_dir():
        items = [(row["path"], (SEGMENTED / row["path"]).read_bytes()) for row in test]
        rows.append(["background removed (ALL_segmented)", *score(predictor, items, labels)])
    header = ["images", "n", "accuracy", "flagged for review", "wrong and not flagged",
              "benign called leukemia, not flagged", "leukemia called benign, not flagged"]
    body = section_header("Review flag under distribution shift (bundled model, test part)", command_line()) + "\n"
    body += ("Proxies for another lab's images: the same test images with stain / optics changes. A safe "
             "second reader keeps *wrong and not flagged* near zero as images drift. The counts are those of "
             "`leukoscope evaluate` on a model package (`leukoscope.review.metrics`).\n\n")
    body += table(header, rows)
    print(body)
    if not args.no_write:
        write_section("shift", body, *([args.results] if args.results else []))


if __name__ == "__main__":
    main()

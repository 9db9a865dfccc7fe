"""How the review flag behaves when images stop looking like the training images.

No images of normal lymphocytes from another lab ship with this project, so this measures proxies on the
bundled model: the test part of bundle/split.csv (838 images) as it is, with stain / optics changes
applied (colour shifts, blur, heavy JPEG compression, grayscale), and the dataset authors' own
background-removed versions of the same images (ALL_segmented). The number that matters for safety is the
share of *confident wrong calls* (wrong and not flagged), and for benign images the share called leukemia
without a flag.

    .venv/bin/python benchmarks/shift.py
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, SPLIT, command_line, section_header, table, write_section

SEGMENTED = DATA.parent / "ALL_segmented"


def _jpeg(image: Image.Image, quality: int) -> bytes:
    """The file a camera or a careless export would write (kept as JPEG bytes, as a user's file is)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _tint(image: Image.Image, gains: tuple[float, float, float]) -> Image.Image:
    array = np.asarray(image, dtype=np.float32) * np.asarray(gains, np.float32)
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


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
}


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def score(predictor, items: list[tuple[str, bytes]], labels: list[str]) -> list[object]:
    results = predictor.predict_bytes(items)
    correct = np.array([r.label == y for r, y in zip(results, labels, strict=True)])
    flagged = np.array([r.review for r in results])
    benign = np.array([y == "Benign" for y in labels])
    called_leukemia = np.array([r.label not in (None, "Benign") for r in results])
    unflagged_benign_as_leukemia = int((benign & called_leukemia & ~flagged).sum())
    return [len(results), f"{correct.mean():.3f}", f"{flagged.mean():.3f}", f"{(~correct & ~flagged).mean():.3f}",
            f"{unflagged_benign_as_leukemia} of {int(benign.sum())}"]


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
    header = ["images", "n", "accuracy", "flagged for review", "wrong and not flagged", "benign called leukemia, not flagged"]
    body = section_header("Review flag under distribution shift (bundled model, test part)", command_line()) + "\n"
    body += ("Proxies for another lab's images: the same test images with stain / optics changes. A safe "
             "second reader keeps *wrong and not flagged* near zero as images drift.\n\n")
    body += table(header, rows)
    print(body)
    if not args.no_write:
        write_section("shift", body, *([args.results] if args.results else []))


if __name__ == "__main__":
    main()

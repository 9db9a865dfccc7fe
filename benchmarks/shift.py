"""How the model and its review flag hold up when images look as if another lab had taken them.

The test part of bundle/split.csv (838 images) goes through the documented, seeded family of second-lab
transforms of `leukoscope.data.shifts` (stain hue, stain amounts in H&E space, magnification 0.5-2x,
blur, camera white balance, JPEG re-compression): one row per named shift at the ends of the ranges, and
rows of random composite shifts (every image its own draw, seeds 0, 1, 2). Each shifted image is encoded as
the other lab's file (JPEG at its quality, else PNG) and predicted by the package like any upload. A few
shifts beyond the family's ranges (and the dataset authors' background-removed images, ALL_segmented)
follow for reference; the targets do not count them.

Issue #13's targets, checked at the end (test part only; the review rules were chosen on the val part and
shifted copies of it by scripts/refit_review.py's written rule, never here): leukemia called Benign without
a review flag 0 under every shift of the family; accuracy >= 97% under the hue and magnification shifts;
unshifted accuracy no more than 0.2 points below the bundled package's 99.64%.

    .venv/bin/python -m benchmarks.shift [--model PACKAGE] [--no-write] [--composites 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import csv
import io
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from benchmarks.common import DATA, RESULTS, SPLIT, command_line, publish, section_header, table
from leukoscope.data.shifts import HUE_SHIFTS, MAGNIFICATION_SHIFTS, NAMED, RANGES, Shift, jpeg_bytes, sample_shifts

SEGMENTED = DATA.parent / "ALL_segmented"
BASELINE_ACCURACY = 0.9964  # the bundled package on the unshifted test part when issue #13 was filed
TARGET_HUE_MAGNIFICATION = 0.97
UNSHIFTED_TOLERANCE = 0.002


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# Beyond the family's ranges: what a careless lab could still send (reported, not targeted).
BEYOND: dict[str, Callable[[Image.Image], bytes]] = {
    "beyond: out of focus (Gaussian blur r=3)": lambda im: _png(im.filter(ImageFilter.GaussianBlur(3))),
    "beyond: heavy JPEG (quality 10)": lambda im: jpeg_bytes(im, 10),
    "beyond: grayscale camera": lambda im: _png(im.convert("L").convert("RGB")),
}


@dataclass
class Row:
    """One shift's counts on the test part (those of `leukoscope evaluate` on a package)."""

    name: str
    kind: str  # "none", "named", "composite" or "beyond"
    n: int
    accuracy: float
    flagged: float
    n_leukemia: int
    leukemia_called_benign: int
    leukemia_called_benign_flagged: int
    leukemia_called_benign_not_flagged: int
    n_benign: int
    benign_called_leukemia_not_flagged: int
    accuracy_as_given: float | None = None  # realigned images' calls as given (no realignment); None: = accuracy
    realigned: float = 0.0  # share of images whose call came from a realignment view
    flag_codes: dict[str, float] = field(default_factory=dict)  # share of images with each review code

    def __post_init__(self) -> None:
        if self.accuracy_as_given is None:
            self.accuracy_as_given = self.accuracy

    def cells(self) -> list[Any]:
        return [self.name, self.n, f"{self.accuracy:.3f}", f"{self.accuracy_as_given:.3f}", f"{self.realigned:.3f}",
                f"{self.flagged:.3f}",
                f"{self.leukemia_called_benign} of {self.n_leukemia}", self.leukemia_called_benign_flagged,
                f"**{self.leukemia_called_benign_not_flagged}**", f"{self.benign_called_leukemia_not_flagged} of {self.n_benign}"]


def score(predictor: Any, name: str, kind: str, items: list[tuple[str, bytes]], labels: list[str]) -> Row:
    """Predict the encoded images and count what the review flag caught."""
    results = predictor.predict_bytes(items)
    classes = list(predictor.classes)
    benign = classes.index("Benign") if "Benign" in classes else -1
    y = np.array([classes.index(label) for label in labels])
    called = np.array([classes.index(r.label) if r.label is not None else -1 for r in results])
    realigned = [r.review_details.get("realigned") for r in results]
    as_given = np.array([classes.index(d["label_as_given"]) if d else c for d, c in zip(realigned, called, strict=True)])
    flagged = np.array([r.review for r in results], bool)
    leukemia, missed = y != benign, (y != benign) & (called == benign)
    codes = Counter(code for r in results for code in set(r.review_codes))
    return Row(name, kind, len(y), float((called == y).mean()), float(flagged.mean()), int(leukemia.sum()),
               int(missed.sum()), int((missed & flagged).sum()), int((missed & ~flagged).sum()),
               int((~leukemia).sum()), int((~leukemia & (called != benign) & (called >= 0) & ~flagged).sum()),
               float((as_given == y).mean()), float(np.mean([d is not None for d in realigned])),
               {code: count / len(y) for code, count in sorted(codes.items())})


def test_records(split: Path = SPLIT) -> list[dict[str, str]]:
    with open(split, newline="") as handle:
        return [row for row in csv.DictReader(handle) if row["part"] == "test"]


def run(predictor: Any, records: list[dict[str, str]], data: Path, *, composites: int = 3,
        beyond: bool = True, log: Callable[[str], None] = print) -> list[Row]:
    """Every row: the test part as is, each named shift, `composites` random composite copies (seeds 0..),
    then (with `beyond`) the out-of-range shifts and ALL_segmented when it is there."""
    labels = [row["label"] for row in records]
    originals = [Image.open(data / row["path"]).convert("RGB") for row in records]
    plans: list[tuple[str, str, list[Shift]]] = [("none (test part as is)", "none", [Shift()] * len(records))]
    plans += [(name, "named", [shift] * len(records)) for name, shift in NAMED.items()]
    plans += [(f"random composite, seed {k}", "composite", sample_shifts(len(records), k)) for k in range(composites)]
    rows = []
    for name, kind, shifts in plans:
        items = [(row["path"], shift.encode(image)) for row, image, shift in zip(records, originals, shifts, strict=True)]
        rows.append(score(predictor, name, kind, items, labels))
        log(f"{name}: {rows[-1].cells()[1:]}")
    if beyond:
        for name, transform in BEYOND.items():
            items = [(row["path"], transform(image)) for row, image in zip(records, originals, strict=True)]
            rows.append(score(predictor, name, "beyond", items, labels))
        if SEGMENTED.is_dir() and data == DATA:
            items = [(row["path"], (SEGMENTED / row["path"]).read_bytes()) for row in records]
            rows.append(score(predictor, "beyond: background removed (ALL_segmented)", "beyond", items, labels))
    return rows


def targets(rows: list[Row]) -> list[tuple[str, bool, str]]:
    """(target, met, measured) for issue #13's three targets."""
    family = [r for r in rows if r.kind in ("none", "named", "composite")]
    missed = sum(r.leukemia_called_benign_not_flagged for r in family)
    worst = [r.name for r in family if r.leukemia_called_benign_not_flagged]
    focus = [r for r in rows if r.name in (*HUE_SHIFTS, *MAGNIFICATION_SHIFTS)]
    low = min(focus, key=lambda r: r.accuracy) if focus else None
    plain = next((r for r in rows if r.kind == "none"), None)
    return [
        ("leukemia called Benign without a flag: 0 under every shift of the family", missed == 0,
         f"{missed} in all ({', '.join(worst) or 'none'})"),
        (f"accuracy >= {TARGET_HUE_MAGNIFICATION:.0%} under the hue and magnification shifts",
         bool(low and all(r.accuracy >= TARGET_HUE_MAGNIFICATION for r in focus)),
         f"lowest {low.accuracy:.1%} ({low.name})" if low else "n/a"),
        (f"unshifted accuracy >= {BASELINE_ACCURACY - UNSHIFTED_TOLERANCE:.2%}",
         bool(plain and plain.accuracy >= BASELINE_ACCURACY - UNSHIFTED_TOLERANCE - 1e-9),
         f"{plain.accuracy:.2%}" if plain else "n/a"),
    ]


def render(rows: list[Row], command: str, model: str) -> str:
    """The RESULTS.md section."""
    ranges = "; ".join(f"{k} {lo:g}..{hi:g}" for k, (lo, hi) in RANGES.items())
    body = section_header(f"Review flag under distribution shift ({model}, test part)", command) + "\n"
    body += ("The test part as another lab would photograph it: the seeded family of `leukoscope.data.shifts` "
             f"(ranges: {ranges}), one row per named shift at the ends of the ranges and copies with a random "
             "composite shift per image; rows marked *beyond* lie outside the family and are not targeted. The "
             "review rules were chosen on the val part and shifted copies of it (`scripts/refit_review.py`), "
             "never on these images. Counts as `leukoscope evaluate` gives them for a package. *As given*: each "
             "call as the image itself gave it, i.e. without the package's realignment (`leukoscope.review.realign`: an "
             "image the OOD check flags is also tried at the package's other magnifications and stain hues, chosen "
             "by `scripts/fit_realign.py` on the val part; *realigned*: the share whose call came from such a "
             "view; a realigned image stays flagged). A Benign call nothing else flags is also read at the package's "
             "Benign-check views and flagged `benign_view` when P(Benign) drops there (`leukoscope.review.benign_check`, "
             "chosen by `scripts/fit_benign_check.py` on the val part); it adds flags, never changes a call.\n\n")
    header = ["images", "n", "accuracy", "accuracy as given", "realigned", "flagged for review", "leukemia called Benign",
              "of them flagged",
              "of them not flagged", "benign called leukemia, not flagged"]
    body += table(header, [r.cells() for r in rows]) + "\n"
    body += "Issue #13's targets:\n\n" + "".join(
        f"- {name}: {measured}: **{'met' if met else 'not met'}**\n" for name, met, measured in targets(rows))
    return body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model package (default: the bundled one)")
    parser.add_argument("--composites", type=int, default=3, help="random composite copies (seeds 0, 1, ...)")
    parser.add_argument("--no-write", action="store_true", help="print the section only")
    parser.add_argument("--results", type=Path, default=RESULTS, help="RESULTS.md to update")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args()
    import leukoscope

    predictor = leukoscope.load_model(args.model)
    rows = run(predictor, test_records(), DATA, composites=args.composites)
    model = "bundled model" if args.model is None else f"model {Path(args.model).name}"
    publish("shift", render(rows, command_line(), model), write=not args.no_write, results=args.results,
            json_path=args.json, raw=[r.__dict__ for r in rows])


if __name__ == "__main__":
    main()

"""What the model needs to make its call: the test part with parts of each field painted out.

Grad-CAM (benchmarks/where_it_looks.py) shows where the gradients are, not what the call depends on. This
benchmark intervenes instead: every test image of bundle/split.csv is predicted as it is, with its white
cells (leukoscope.segmentation.segment_field's mask, grown 2 px) painted with the field's median background
colour, with the same mask moved half a field over (so as many background pixels are painted: the control),
and with the camera's scale-bar corner painted. A model that reads the blasts loses its leukemia calls when
the cells are gone and keeps them in the control; one that reads the slide (stain, red cells, plasma, the
acquisition) keeps them either way.

    .venv/bin/python -m benchmarks.occlusion [--model PACKAGE] [--limit N] [--no-write] [--json out.json]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from benchmarks.common import (
    DATA,
    RESULTS,
    command_line,
    cpu_flags,
    display_path,
    pct,
    publish,
    section_header,
    table,
)
from benchmarks.where_it_looks import test_records
from leukoscope.data.imaging import load_rgb
from leukoscope.segmentation.field import segment_field

NOTICE = "Research software, not a medical device: never use it alone for a diagnosis."
SCALE_BAR = (0.88, 0.83)  # the bottom-right corner from these fractions of height and width holds the bar
GROW_PX = 2
VARIANTS = ("as is", "white cells painted out", "control: as many background pixels painted out",
            "scale-bar corner painted out")


def variants(rgb: np.ndarray) -> tuple[list[np.ndarray], float]:
    """The field as it is and painted three ways (VARIANTS order), and the cells' share of the field."""
    segmentation = segment_field(rgb, crops=False)
    mask = segmentation.mask
    if mask.shape != rgb.shape[:2]:  # the working image is the field resized: back to the field's pixels
        from PIL import Image

        mask = np.asarray(Image.fromarray(mask).resize(rgb.shape[1::-1], Image.NEAREST))
    mask = ndi.binary_dilation(mask, iterations=GROW_PX) if mask.any() else mask
    colour = np.median(rgb[~mask] if (~mask).any() else rgb.reshape(-1, 3), axis=0).astype(np.uint8)
    height, width = mask.shape
    control = np.roll(mask, (height // 2, width // 2), axis=(0, 1)) & ~mask
    corner = np.zeros_like(mask)
    corner[int(height * SCALE_BAR[0]):, int(width * SCALE_BAR[1]):] = True
    painted = []
    for region in (mask, control, corner):
        copy = rgb.copy()
        copy[region] = colour
        painted.append(copy)
    return [rgb, *painted], float(mask.mean())


def run(predictor: Any, records: list[dict[str, str]], data: Path, *, batch_size: int = 32,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Calls of `predictor` on every variant of every record; returns per-variant figures."""
    classes = list(predictor.classes)
    labels = np.asarray([classes.index(row["label"]) for row in records])
    calls: dict[str, list[int]] = {name: [] for name in VARIANTS}
    shares = []
    for start in range(0, len(records), batch_size):
        batch: dict[str, list[np.ndarray]] = {name: [] for name in VARIANTS}
        for row in records[start:start + batch_size]:
            image = np.asarray(load_rgb(data / row["path"], max_side=predictor.preprocess.input_size * 4))
            images, share = variants(image)
            shares.append(share)
            for name, variant in zip(VARIANTS, images, strict=True):
                batch[name].append(np.asarray(_model_input(variant, predictor)))
        for name in VARIANTS:
            calls[name] += predictor.predict_proba(np.stack(batch[name])).argmax(1).tolist()
        log(f"{min(start + batch_size, len(records))}/{len(records)} images")
    benign = classes.index("Benign") if "Benign" in classes else None
    figures = {}
    for name in VARIANTS:
        call = np.asarray(calls[name])
        figures[name] = {
            "accuracy": float((call == labels).mean()),
            "recall": {c: float((call[labels == k] == k).mean()) if (labels == k).any() else None
                       for k, c in enumerate(classes)},
            "leukemia_called_benign": None if benign is None else int(((labels != benign) & (call == benign)).sum()),
        }
    return {"classes": classes, "n": len(records), "figures": figures, "cells_share_median": float(np.median(shares))}


def _model_input(rgb: np.ndarray, predictor: Any) -> np.ndarray:
    from PIL import Image

    from leukoscope.models.preprocessing import resize_rgb

    return resize_rgb(Image.fromarray(rgb), predictor.preprocess)


def findings(outcome: dict[str, Any]) -> list[str]:
    """Plain-words reading of the table: leukemia recall without the white cells against as is."""
    figures, classes = outcome["figures"], outcome["classes"]
    leukemia = [c for c in classes if c != "Benign" and figures["as is"]["recall"][c] is not None]
    lines = []
    if leukemia:
        before = float(np.mean([figures["as is"]["recall"][c] for c in leukemia]))
        after = float(np.mean([figures["white cells painted out"]["recall"][c] for c in leukemia]))
        control = float(np.mean([figures["control: as many background pixels painted out"]["recall"][c]
                                 for c in leukemia]))
        kept = after / before if before else 0.0
        verdict = ("the field model reads the slide (stain, red cells, plasma, the acquisition) more than the "
                   "blasts: its calls on another lab's slides cannot be trusted for that reason alone, and a "
                   "cell-level model (issue #16) is the remedy to test" if kept >= 0.9 else
                   "the leukemia calls depend on the white cells")
        lines.append(f"Mean leukemia recall: {pct(before)} as is, {pct(after)} with every white cell painted out, "
                     f"{pct(control)} in the control: {verdict}.")
    corner, plain = figures["scale-bar corner painted out"]["accuracy"], figures["as is"]["accuracy"]
    lines.append(f"Scale-bar corner painted out: accuracy {pct(corner, 2)} against {pct(plain, 2)} as is"
                 + (": the calls do not depend on the scale bar, whatever Grad-CAM's corner peaks suggest."
                    if plain - corner <= 0.01 else ": the calls depend on the scale bar."))
    return lines


def render(outcome: dict[str, Any], command: str, model: str) -> str:
    """The RESULTS.md section."""
    classes = outcome["classes"]
    body = section_header(f"What the calls depend on: painting out parts of each field ({model}, test part)",
                          command) + "\n"
    body += (f"{NOTICE} {outcome['n']} images. White cells: segment_field's mask grown {GROW_PX} px (median "
             f"{pct(outcome['cells_share_median'])} of a field), painted with the field's median colour; the "
             "control paints the same mask moved half a field over (background only); the scale-bar corner is "
             f"the bottom-right {100 - SCALE_BAR[1] * 100:.0f}% x {100 - SCALE_BAR[0] * 100:.0f}% of the field.\n\n")
    rows = []
    for name in VARIANTS:
        figure = outcome["figures"][name]
        rows.append([name, pct(figure["accuracy"], 2), *[pct(figure["recall"][c]) for c in classes],
                     figure["leukemia_called_benign"]])
    body += table(["field", "accuracy", *[f"recall {c}" for c in classes], "leukemia called Benign"], rows) + "\n"
    body += "".join(f"- {line}\n" for line in findings(outcome))
    return body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model package (default: the bundled one)")
    parser.add_argument("--limit", type=int, default=None, help="first N test images of each class only")
    parser.add_argument("--no-write", action="store_true", help="print the section only")
    parser.add_argument("--results", type=Path, default=RESULTS, help="RESULTS.md to update")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args()
    print(NOTICE)
    print(f"CPU flags: {', '.join(cpu_flags()) or 'none listed'}")
    if not DATA.is_dir():
        raise SystemExit(f"no data at {display_path(DATA)}: the benchmark needs the ALL dataset")
    import leukoscope

    predictor = leukoscope.load_model(args.model)
    outcome = run(predictor, test_records(limit=args.limit), DATA)
    model = "bundled model" if args.model is None else f"model {Path(args.model).name}"
    publish("occlusion", render(outcome, command_line(), model), write=not args.no_write, results=args.results,
            json_path=args.json, raw=outcome)


if __name__ == "__main__":
    main()

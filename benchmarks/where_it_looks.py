"""Where the model looks: is the Grad-CAM of its call on the white cells or on the background?

Every test image of bundle/split.csv (838) goes through the package (the bundled one by default): its call,
the Grad-CAM map of the called class (`leukoscope.evaluation.localisation.gradcam_maps`, the computation of
the web app's overlay) and the white cells of `leukoscope.segmentation.segment_field`. Per true class, for
all images and for the correctly classified leukemia images: the share of the Grad-CAM energy on the white
cells (chance level: the cells' share of the field, beside it) and the pointing game (is the map's peak on
a white cell? the peak is known to one block of the last conv stage, 32 px at 224 px, widened by
`TOLERANCE_PX`), with exact Clopper-Pearson intervals. Fields with no cell found and flat maps are
excluded and counted. Target of issue #16: the peak inside a white cell for >= 95% of correctly
classified leukemia images. A figure of a few examples (cells outlined, peak marked) goes to
benchmarks/where_it_looks.png.

    .venv/bin/python -m benchmarks.where_it_looks [--model PKG] [--limit N] [--no-write] [--rows out.csv] [--json out.json]

--limit N takes the first N test images of each class (in split order): a quick look, not the benchmark.
Research software, not a medical device.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.common import (
    DATA,
    REPO,
    RESULTS,
    SPLIT,
    command_line,
    cpu_flags,
    display_path,
    load_average,
    publish,
    section_header,
    table,
)
from leukoscope.evaluation import localisation as loc

FIGURE = REPO / "benchmarks" / "where_it_looks.png"
NOTICE = "Research software, not a medical device: never use it alone for a diagnosis."
EXAMPLES_PER_CLASS = 2


def test_records(split: Path = SPLIT, limit: int | None = None) -> list[dict[str, str]]:
    """The test rows of the split, in order; with `limit`, the first `limit` of each class."""
    with open(split, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["part"] == "test"]
    if limit is None:
        return rows
    seen: dict[str, int] = {}
    kept = []
    for row in rows:
        seen[row["label"]] = seen.get(row["label"], 0) + 1
        if seen[row["label"]] <= limit:
            kept.append(row)
    return kept


def example_indices(labels: list[str], per_class: int = EXAMPLES_PER_CLASS) -> set[int]:
    """The first `per_class` images of each class: the figure's examples (fixed before anything is seen)."""
    chosen: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        if len(chosen.setdefault(label, [])) < per_class:
            chosen[label].append(i)
    return {i for indices in chosen.values() for i in indices}


def run(predictor: Any, records: list[dict[str, str]], data: Path, *, batch_size: int = 16,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Predict, explain and localise `records`; returns the summary, per-image rows and the examples."""
    classes = list(predictor.classes)
    unknown = sorted({row["label"] for row in records} - set(classes))
    if unknown:
        raise SystemExit(f"labels {unknown} are not classes of the model ({classes})")
    paths = [data / row["path"] for row in records]
    labels = [row["label"] for row in records]
    started, load = time.perf_counter(), load_average()
    predicted = []
    for prediction in predictor.predict_paths(paths, batch_size=batch_size):
        if prediction.error:
            raise SystemExit(f"cannot read {prediction.source}: {prediction.error}")
        probabilities = [prediction.probabilities[c] for c in classes]
        predicted.append(int(np.argmax(probabilities)))
    wanted = example_indices(labels)

    def progress(_: str, done: int, total: int) -> None:
        log(f"{done}/{total} images explained ({time.perf_counter() - started:.0f} s)")

    results, examples = loc.localise_paths(predictor, paths, predicted, batch_size=batch_size, progress=progress,
                                           keep=lambda i, _: i in wanted)
    y = [classes.index(label) for label in labels]
    summary = loc.summarise(results, y, predicted, classes)
    return {"summary": summary, "results": results, "examples": examples, "labels": labels,
            "predicted": [classes[p] for p in predicted], "paths": [row["path"] for row in records],
            "seconds": time.perf_counter() - started, "load": load}


def figure(examples: dict[int, loc.Example], labels: list[str], predicted: list[str], path: Path) -> Path:
    """The examples side by side: the field, its Grad-CAM (jet, half transparent), the white cells outlined
    in white and the peak as a cross (green: on a cell, red: off every cell)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from skimage.segmentation import find_boundaries

    from leukoscope.data.fileio import atomic_open

    order = sorted(examples)
    columns = max(1, min(4, len(order)))
    rows = max(1, -(-len(order) // columns))
    fig = Figure(figsize=(3.0 * columns, 3.6 * rows), dpi=80)
    FigureCanvasAgg(fig)
    for k, i in enumerate(order):
        example = examples[i]
        axis = fig.add_subplot(rows, columns, k + 1)
        axis.imshow(example.working)
        axis.imshow(example.cam, cmap="jet", alpha=0.4, vmin=0.0, vmax=1.0)
        edges = np.ma.masked_where(~find_boundaries(example.labels, mode="outer"), np.ones(example.labels.shape))
        axis.imshow(edges, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        result = example.result
        if result.peak is not None:
            axis.plot(*result.peak, marker="x", markersize=14, markeredgewidth=3,
                      color="lime" if result.hit else "red")
        text = (f"energy on cells {100 * result.energy_inside:.0f}%" if result.energy_inside is not None
                else result.status)
        axis.set_title(f"{labels[i]} called {predicted[i]}\n{text}", fontsize=9)
        axis.set_axis_off()
    fig.suptitle("Grad-CAM of the call; white cells outlined; x: peak (green on a cell, red off)", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    image = Image.open(buffer).convert("RGB").quantize(256)  # a palette PNG: a third of the bytes
    with atomic_open(path, "wb") as handle:
        image.save(handle, format="PNG", optimize=True)
    return path


def peak_blocks(outcome: dict[str, Any]) -> list[list[Any]]:
    """Per true class: the Grad-CAM block (row, column; 1 = top / left) that holds the peak most often, and
    how often. One block for most images of a class is a position, not a cell: a shortcut to look for."""
    rows = []
    for label in dict.fromkeys(outcome["labels"]):
        blocks = [(int(r.peak[1] // r.block_px) + 1, int(r.peak[0] // r.block_px) + 1)
                  for r, y in zip(outcome["results"], outcome["labels"], strict=True)
                  if y == label and r.peak is not None and r.block_px]
        if blocks:
            (where, count), = Counter(blocks).most_common(1)
            rows.append([label, len(blocks), f"row {where[0]}, column {where[1]}",
                         f"{count} ({100 * count / len(blocks):.1f}%)"])
    return rows


def render(outcome: dict[str, Any], command: str, model: str, figure_path: Path | None) -> str:
    """The RESULTS.md section."""
    summary = outcome["summary"]
    n = len(outcome["results"])
    block = "n/a" if summary.get("block_px") is None else f"{summary['block_px']:.0f} px of the 224 px field"
    body = section_header(f"Where the model looks ({model}, test part)", command) + "\n"
    body += (f"{NOTICE} {n} images; Grad-CAM of the called class (the web app's overlay), white cells of "
             "`leukoscope.segmentation.segment_field`. *Energy inside*: the share of the Grad-CAM map (min-max "
             "scaled per image) on white-cell pixels; chance level is the cells' share of the field. *Peak "
             f"inside*: the map's peak, known to one block of the last conv stage ({block}), "
             f"widened by {summary['tolerance_px']:g} px, holds a white-cell pixel; exact Clopper-Pearson "
             f"intervals. {outcome['seconds']:.0f} s in all (1-minute load {outcome.get('load', 0.0):.1f} at the "
             "start).\n\n")
    body += table(loc.TABLE_HEADER, loc.table_rows(summary)) + "\n"
    body += "".join(f"- {line}\n" for line in summary["findings"])
    blocks = peak_blocks(outcome)
    if blocks:
        grid = round(224 / summary["block_px"]) if summary.get("block_px") else "?"
        body += (f"\nWhere the peaks are: the block of the {grid} x {grid} Grad-CAM grid that holds the peak most "
                 "often, per true class (by chance about one image in "
                 f"{grid if isinstance(grid, str) else grid * grid} per block).\n\n")
        body += table(["true class", "images with a peak", "most frequent peak block", "images"], blocks)
    if figure_path is not None:
        body += f"\n![Examples]({figure_path.name}) `{display_path(figure_path)}`: the first "
        body += f"{EXAMPLES_PER_CLASS} test images of each class, cells outlined, peak marked.\n"
    return body


def write_rows(path: Path, outcome: dict[str, Any]) -> None:
    loc.write_rows(path, outcome["paths"], outcome["labels"], outcome["predicted"], outcome["results"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model package (default: the bundled one)")
    parser.add_argument("--limit", type=int, default=None, help="first N test images of each class only")
    parser.add_argument("--batch-size", type=int, default=16, help="images per Grad-CAM batch")
    parser.add_argument("--no-write", action="store_true", help="print the section only (no RESULTS.md, no figure)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="RESULTS.md to update")
    parser.add_argument("--rows", type=Path, default=None, help="also write one CSV row per image here")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary as JSON here")
    args = parser.parse_args()
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    print(NOTICE)
    print(f"CPU flags: {', '.join(cpu_flags()) or 'none listed'}")
    if not DATA.is_dir():
        raise SystemExit(f"no data at {display_path(DATA)}: the benchmark needs the ALL dataset")
    import leukoscope

    predictor = leukoscope.load_model(args.model)
    outcome = run(predictor, test_records(limit=args.limit), DATA, batch_size=args.batch_size,
                  log=lambda message: print(message, file=sys.stderr, flush=True))
    if args.rows is not None:
        write_rows(args.rows, outcome)
    path = None if args.no_write else figure(outcome["examples"], outcome["labels"], outcome["predicted"], FIGURE)
    model = "bundled model" if args.model is None else f"model {Path(args.model).name}"
    publish("where-it-looks", render(outcome, command_line(), model, path), write=not args.no_write,
            results=args.results, json_path=args.json,
            raw={"summary": outcome["summary"], "seconds": outcome["seconds"], "n": len(outcome["results"])})
    print(NOTICE)


if __name__ == "__main__":
    main()

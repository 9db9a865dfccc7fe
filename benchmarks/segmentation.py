"""How well `leukoscope.segmentation.segment_field` finds the white cells, against the dataset authors' masks,
and how fast it is on one core.

Reference: ../shared/data/ALL_segmented holds the authors' background-removed copy of every image; their
mask is its non-black pixels. The copies are JPEGs, so "non-black" means any channel above
`REFERENCE_LEVEL` (40 of 255): JPEG ringing on the black background stays below it.

Images reported: every image of the test part of bundle/split.csv (838; duplicate-aware). The parameters of
`SegmentationParams` were chosen beforehand on a tuning subset disjoint from it: 40 images per class
drawn with random.Random(0).sample from the sorted paths of each class in the *train* part (the rule is
`tuning_subset` below; this script never tunes anything, it only reports).

Per class: mean and median IoU and Dice of the union of the cells with the authors' mask; the anchor of
issue #16 (Otsu's threshold on (R+B)/2 - G, nothing else) on the same images; the authors' own mask with
objects under 60 px (specks, platelets: smaller than any white cell) removed and holes filled, scored
against itself as it is (the ceiling any speck-free segmentation can reach); and our IoU against that
cleaned mask; then the mean IoU (ours / anchor) with a looser and a stricter "non-black" (levels 10, 80).
Target (issue #16): mean IoU >= 0.90 on Benign, Early and Pre. Pro is left out of the target: the authors'
colour threshold misses the magenta-stained Pro-B blasts, so their Pro masks hold specks of red-cell rims
and almost no cell (looked at as images; the section gives the share of our cell pixels they keep).

Speed: median milliseconds per 224-px field on one core (affinity pinned to one CPU, BLAS/OpenMP/torch
threads at 1), wall clock and CPU time, measured while other jobs may run (the load is printed).

    .venv/bin/python -m benchmarks.segmentation [--no-write] [--json out.json] [--limit N]
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from benchmarks.common import (
    DATA,
    RESULTS,
    SPLIT,
    command_line,
    load_average,
    machine,
    publish,
    section_header,
    table,
)
from leukoscope.segmentation import PARAMS, segment_field
from leukoscope.segmentation.field import otsu_threshold

SEGMENTED = DATA.parent / "ALL_segmented"
REFERENCE_LEVEL = 40  # a pixel of an ALL_segmented JPEG is "non-black" when any channel is above this
SPECK_AREA = 60  # px: the smallest white cell (SegmentationParams.min_cell_area); smaller objects are specks
TARGET_IOU = 0.90
TARGET_CLASSES = ("Benign", "Early", "Pre")
TARGET_MS = 20.0
SHORT = {"Benign": "Benign", "Early Pre-B": "Early", "Pre-B": "Pre", "Pro-B": "Pro"}
TUNING_PER_CLASS = 40
OTHER_LEVELS = (10, 80)  # the same scores with a looser and a stricter "non-black", to show the choice matters little
DISCLAIMER = "Research software, not a medical device."


def records(part: str, split: Path = SPLIT) -> list[dict[str, str]]:
    with open(split, newline="") as handle:
        return [row for row in csv.DictReader(handle) if row["part"] == part]


def tuning_subset(split: Path = SPLIT) -> list[str]:
    """The images the parameters were chosen on: 40 per class of the train part, random.Random(0)."""
    rows, rng, chosen = records("train", split), random.Random(0), []
    for label in SHORT:
        chosen += rng.sample(sorted(r["path"] for r in rows if r["label"] == label), TUNING_PER_CLASS)
    return chosen


def reference_mask(path: str, level: int = REFERENCE_LEVEL) -> np.ndarray:
    """The authors' mask: the non-black pixels of their background-removed copy."""
    return np.asarray(Image.open(SEGMENTED / path).convert("RGB")).max(axis=2) > level


def cleaned(mask: np.ndarray) -> np.ndarray:
    """The authors' mask without specks under SPECK_AREA px (8-connected), holes filled."""
    labels, count = ndi.label(mask, structure=np.ones((3, 3), bool))
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    keep = areas >= SPECK_AREA
    keep[0] = False
    return ndi.binary_fill_holes(keep[labels])


def anchor(rgb: np.ndarray) -> np.ndarray:
    """Issue #16's anchor: Otsu's threshold on (R+B)/2 - G, nothing else."""
    array = rgb.astype(np.float32)
    score = (array[..., 0] + array[..., 2]) / 2 - array[..., 1]
    return score > otsu_threshold(score)


def iou_dice(mask: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    both, either = int((mask & reference).sum()), int((mask | reference).sum())
    total = int(mask.sum()) + int(reference.sum())
    return (both / either if either else 1.0), (2 * both / total if total else 1.0)


def score_images(rows: list[dict[str, str]]) -> dict[str, dict[str, list[float]]]:
    """Per class, per measure, one value per image."""
    out: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        rgb = np.asarray(Image.open(DATA / row["path"]).convert("RGB"))
        reference = reference_mask(row["path"])
        clean = cleaned(reference)
        result = segment_field(rgb)
        mask = result.mask
        values = out.setdefault(SHORT[row["label"]], {})
        brightness = np.asarray(Image.open(SEGMENTED / row["path"]).convert("RGB")).max(axis=2)
        plain = anchor(rgb)
        for level in OTHER_LEVELS:
            values.setdefault(f"iou_{level}", []).append(iou_dice(mask, brightness > level)[0])
            values.setdefault(f"anchor_iou_{level}", []).append(iou_dice(plain, brightness > level)[0])
        measures = {"iou": iou_dice(mask, reference)[0], "dice": iou_dice(mask, reference)[1],
                    "anchor_iou": iou_dice(plain, reference)[0], "ceiling_iou": iou_dice(clean, reference)[0],
                    "clean_iou": iou_dice(mask, clean)[0], "reference_fg": float(reference.mean()),
                    "fg": float(mask.mean()), "cells": float(len(result.cells)),
                    "no_cell": float(result.status != "ok"),
                    "authors_keep": float((reference & mask).sum() / mask.sum()) if mask.any() else float("nan")}
        for name, value in measures.items():
            values.setdefault(name, []).append(value)
    return out


def timing(rows: list[dict[str, str]], n: int = 200, rounds: int = 5) -> dict[str, float]:
    """Median ms per field over `rounds` passes on `n` test images: one CPU (affinity), one thread."""
    from threadpoolctl import threadpool_limits  # scikit-learn's dependency: BLAS / OpenMP pools

    images = [np.asarray(Image.open(DATA / r["path"]).convert("RGB")) for r in rows[:n]]
    try:
        import torch  # not used by segmentation; its pool set to 1 in case a caller imported it

        torch.set_num_threads(1)
    except ImportError:
        pass
    previous = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if previous:
        os.sched_setaffinity(0, {min(previous)})
    walls, cpus = [], []
    try:
        with threadpool_limits(1):
            for image in images[:20]:
                segment_field(image)
            for _ in range(rounds):
                wall, cpu = time.perf_counter(), time.process_time()
                for image in images:
                    segment_field(image)
                walls.append((time.perf_counter() - wall) / len(images) * 1000)
                cpus.append((time.process_time() - cpu) / len(images) * 1000)
    finally:
        if previous:
            os.sched_setaffinity(0, previous)
    return {"wall_ms": statistics.median(walls), "cpu_ms": statistics.median(cpus), "wall_min": min(walls),
            "wall_max": max(walls), "images": len(images), "rounds": rounds}


def render(scores: dict[str, dict[str, list[float]]], speed: dict[str, float], loads: tuple[float, float],
           info: dict[str, Any], command: str) -> str:
    body = section_header("Segmentation: white cells against the authors' masks (issue #16)", command, info) + "\n"
    body += (f"{DISCLAIMER} Test part of `bundle/split.csv`, every image; parameters (`SegmentationParams`) chosen "
             f"beforehand on {TUNING_PER_CLASS} train-part images per class (random.Random(0)), disjoint from these. "
             f"Authors' mask = pixels of `ALL_segmented` with a channel above {REFERENCE_LEVEL}. IoU/Dice of the "
             "union of the cells found; *anchor* = Otsu on (R+B)/2 - G alone; *ceiling* = the authors' mask with "
             f"specks under {SPECK_AREA} px removed and holes filled, scored against itself as it is (what a "
             "speck-free mask can reach); *vs cleaned* = our IoU against that cleaned mask.\n\n")
    header = ["class", "images", "IoU mean", "IoU median", "Dice mean", "Dice median", "anchor IoU mean",
              "ceiling IoU mean", "IoU vs cleaned, mean", "authors' mask: median foreground", "ours: median foreground",
              "cells per field (median)", "no cell found"]
    rows = []
    for name in ("Benign", "Early", "Pre", "Pro"):
        if name not in scores:
            continue
        s = scores[name]
        rows.append([f"{name}{'' if name in TARGET_CLASSES else ' (not targeted)'}", len(s["iou"]),
                     f"{np.mean(s['iou']):.3f}", f"{np.median(s['iou']):.3f}", f"{np.mean(s['dice']):.3f}",
                     f"{np.median(s['dice']):.3f}", f"{np.mean(s['anchor_iou']):.3f}", f"{np.mean(s['ceiling_iou']):.3f}",
                     f"{np.mean(s['clean_iou']):.3f}", f"{np.median(s['reference_fg']):.1%}", f"{np.median(s['fg']):.1%}",
                     f"{np.median(s['cells']):.0f}", int(sum(s["no_cell"]))])
    body += table(header, rows) + "\n"
    order = sorted((*OTHER_LEVELS, REFERENCE_LEVEL))
    levels = [["class", *[f"ours / anchor, level {level}" for level in order]]]
    for name in scores:
        s = scores[name]
        keys = {lv: ("iou", "anchor_iou") if lv == REFERENCE_LEVEL else (f"iou_{lv}", f"anchor_iou_{lv}") for lv in order}
        levels.append([name, *[f"{np.mean(s[keys[lv][0]]):.3f} / {np.mean(s[keys[lv][1]]):.3f}" for lv in order]])
    body += "Mean IoU with other definitions of the authors' \"non-black\" (a channel above the level):\n\n"
    body += table(levels[0], levels[1:]) + "\n"
    met = [n for n in TARGET_CLASSES if n in scores and np.mean(scores[n]["iou"]) >= TARGET_IOU]
    body += (f"- Target mean IoU >= {TARGET_IOU} on {', '.join(TARGET_CLASSES)}: "
             f"**{'met' if len(met) == len(TARGET_CLASSES) else 'not met'}** (met on: {', '.join(met) or 'none'}). "
             "The ceiling column is the main reason: the authors' masks carry specks on red-cell rims, platelets "
             "and debris, holes in the nuclei and, in many Benign fields, miss the magenta-stained cells; a mask "
             "of whole white cells cannot score above the ceiling against them, whatever finds the cells. The "
             "anchor keeps platelets and specks, which is why it scores close to us on Early.\n")
    keep = {n: float(np.nanmedian(scores[n]["authors_keep"])) for n in scores}
    body += ("- Pro is not targeted: the authors' colour threshold misses the magenta-stained Pro-B blasts, so "
             "their Pro masks hold specks of red-cell rims and almost no cell (median foreground in the table); "
             "of the cell pixels found here, the authors' masks keep a median of "
             + ", ".join(f"{keep[n]:.0%} ({n})" for n in keep) + ".\n")
    body += (f"- Speed: {speed['wall_ms']:.1f} ms per 224-px field wall clock (rounds {speed['wall_min']:.1f}-"
             f"{speed['wall_max']:.1f}), {speed['cpu_ms']:.1f} ms CPU; one core (affinity pinned, BLAS/OpenMP/torch "
             f"threads 1), {speed['images']} test images x {speed['rounds']} rounds, median; target < {TARGET_MS:.0f} ms: "
             f"**{'met' if speed['wall_ms'] < TARGET_MS else 'not met'}** on this run; load average {loads[0]:.2f} at "
             f"the start, {loads[1]:.2f} at the end (other jobs share the 2 cores).\n")
    body += f"- Parameters: `{PARAMS}`\n"
    return body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-write", action="store_true", help="print the section only")
    parser.add_argument("--results", type=Path, default=RESULTS, help="RESULTS.md to update")
    parser.add_argument("--json", type=Path, default=None, help="also write the per-image values as JSON")
    parser.add_argument("--limit", type=int, default=None, help="at most N test images per class (a quick look)")
    args = parser.parse_args()
    if not SEGMENTED.is_dir():
        raise SystemExit(f"{SEGMENTED} not found: this benchmark needs the authors' segmented images")
    info = machine()
    print(f"CPU flags: {', '.join(info['flags']) or 'none listed'}; {DISCLAIMER}")
    rows = records("test")
    overlap = set(tuning_subset()) & {r["path"] for r in rows}
    assert not overlap, f"tuning and reported images overlap: {sorted(overlap)[:3]}"
    if args.limit:
        rows = [r for label in SHORT for r in [x for x in rows if x["label"] == label][: args.limit]]
    start_load = load_average()
    speed = timing(rows)
    scores = score_images(rows)
    body = render(scores, speed, (start_load, load_average()), info, command_line())
    publish("segmentation", body, write=not args.no_write, results=args.results, json_path=args.json,
            raw={"scores": scores, "speed": speed})


if __name__ == "__main__":
    main()

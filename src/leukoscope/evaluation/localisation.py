"""Where the model looks: does its Grad-CAM for the call fall on the white cells or on the background?

A field model can be right for the wrong reason (red cells, plasma, the stain of one lab's slides). The
white cells found by `leukoscope.segmentation.segment_field` say where the evidence is, so for each image
and the Grad-CAM map of its predicted class we measure:

- energy inside: the share of the map's total (pytorch-grad-cam's map, min-max scaled to [0, 1] per image,
  so the least-attended pixel counts 0) that lies on white-cell pixels. Chance level is the cells' share of
  the field (`cell_share`), reported beside it.
- the pointing game: does the map's peak (its first maximum in raster order) fall on a white cell? The
  map is the last convolutional stage's grid (7 x 7 for a 224 px input: one value per 32 px block)
  upsampled, so its peak is only known to a block: the peak counts as inside when the block it stands for,
  widened by `TOLERANCE_PX` working pixels (the mask's edge is uncertain by a pixel or two), holds a
  white-cell pixel. Without a known grid (hand-made maps), the peak point itself, widened by the tolerance.
  Chance level: the share of the map's blocks that would count as inside (`chance_hit`), beside it.

The map (model input, S x S; the input is a plain resize of the whole field) is resized bilinearly onto the
segmentation's working grid (longer side 224 px, aspect kept), so the tolerance is isotropic and in the
same pixels as the cells. Fields where no cell is found (or grayscale / overexposed ones) and maps that are
flat (all zero: no positive evidence) are excluded and counted. Target of issue #16: the peak inside a
white cell for >= 95% of correctly classified leukemia images.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from leukoscope.evaluation.intervals import proportion
from leukoscope.segmentation.field import NO_CELL, OK, FieldSegmentation, segment_field

TOLERANCE_PX = 3.0  # working px (a lymphocyte is ~25-40 px across at 224 px): a peak on a cell's rim counts
COARSE_BLOCK_PX = 48.0  # a Grad-CAM block wider than this (working px) is wider than a white cell
TARGET = 0.95  # share of correctly classified leukemia images whose peak must lie on a white cell
FLAT = "flat map"  # Grad-CAM all zero: no pixel speaks for the class
BENIGN = "Benign"
CORRECT_LEUKEMIA = "correctly classified leukemia"
ALL = "all images"

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Localisation:
    """One image: `status` is "ok", a segmentation status (no cell found, grayscale, overexposed) or FLAT;
    the numbers are None unless it is "ok". Coordinates in working px."""

    status: str
    energy_inside: float | None = None
    cell_share: float | None = None
    peak: tuple[int, int] | None = None  # (x, y)
    peak_distance: float | None = None  # px from the peak to the nearest cell pixel (0: on a cell)
    hit: bool | None = None
    block_px: float | None = None  # the side of the Grad-CAM block the peak stands for (None: no grid known)
    chance_hit: float | None = None  # the hit rate of a peak placed at random (a random block / pixel)


def cam_on_grid(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The map resized (bilinear) to `shape` (rows, cols), values kept in [0, 1]."""
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape == tuple(shape):
        return cam
    resized = Image.fromarray(cam, mode="F").resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def localise(cam: np.ndarray, labels: np.ndarray, *, grid: tuple[int, int] | None = None,
             tolerance: float = TOLERANCE_PX) -> Localisation:
    """Energy inside and pointing game of one Grad-CAM map (any size) against a label mask (0 background,
    1..n cells) of the same field. `grid`: the map's native (rows, cols) before upsampling, when known."""
    labels = np.asarray(labels)
    cells = labels > 0
    if not cells.any():
        return Localisation(NO_CELL)
    heat = cam_on_grid(cam, labels.shape)
    total = float(heat.sum(dtype=np.float64))
    if not np.isfinite(total) or total <= 0.0:
        return Localisation(FLAT, cell_share=float(cells.mean()))
    row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
    distance = float(ndi.distance_transform_edt(~cells)[row, col])
    block = None if grid is None else max(labels.shape[0] / grid[0], labels.shape[1] / grid[1])
    if grid is None:
        hit = distance <= tolerance
        chance = float((ndi.distance_transform_edt(~cells) <= tolerance).mean())
    else:  # the block the peak stands for, widened by the tolerance
        hit = _block_hit(cells, row, col, grid, tolerance)
        centres = [(int((r + 0.5) * cells.shape[0] / grid[0]), int((c + 0.5) * cells.shape[1] / grid[1]))
                   for r in range(grid[0]) for c in range(grid[1])]
        chance = float(np.mean([_block_hit(cells, r, c, grid, tolerance) for r, c in centres]))
    return Localisation("ok", energy_inside=float(heat[cells].sum(dtype=np.float64)) / total,
                        cell_share=float(cells.mean()), peak=(int(col), int(row)),
                        peak_distance=round(distance, 3), hit=hit, block_px=block, chance_hit=round(chance, 4))


def _block_hit(cells: np.ndarray, row: int, col: int, grid: tuple[int, int], tolerance: float) -> bool:
    """Does the block of `grid` around (row, col), widened by `tolerance` px, hold a cell pixel?"""
    half_y = cells.shape[0] / grid[0] / 2 + tolerance
    half_x = cells.shape[1] / grid[1] / 2 + tolerance
    return bool(cells[max(0, int(np.ceil(row - half_y))):int(np.floor(row + half_y)) + 1,
                      max(0, int(np.ceil(col - half_x))):int(np.floor(col + half_x)) + 1].any())


def localise_field(segmentation: FieldSegmentation, cam: np.ndarray, *, grid: tuple[int, int] | None = None,
                   tolerance: float = TOLERANCE_PX) -> Localisation:
    """`localise` on a field's segmentation; a field the segmentation refused keeps its status."""
    if segmentation.status != OK:
        return Localisation(segmentation.status)
    return localise(cam, segmentation.labels, grid=grid, tolerance=tolerance)


# ------------------------------------------------------------------------------------------ Grad-CAM


@dataclass
class NetworkExplainer:
    """What Grad-CAM needs of a run's or checkpoint's network (a package's Predictor has the same three)."""

    network: Any
    classes: tuple[str, ...]
    preprocess: Any

    def torch_model(self) -> Any:
        return self.network


def gradcam_maps(explainer: Any, images: Sequence[Image.Image], targets: Sequence[int]
                 ) -> tuple[np.ndarray, tuple[int, int]]:
    """Grad-CAM maps (N x S x S, [0, 1]) of `images` for the class indices `targets`, in one batch, and the
    grid (rows, cols) of the layer they were upsampled from.

    The same computation as `leukoscope.inference.explain.gradcam_map` (same layer, same preprocessing,
    eval mode, so each map is independent of its batch), with one copy of the network for the whole batch:
    a copy and hooks per image would cost a third more time per image on a CPU.
    """
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from leukoscope.inference.explain import target_layer
    from leukoscope.models.preprocessing import normalize_numpy, resize_rgb

    side = explainer.preprocess.input_size
    if not images:
        return np.zeros((0, side, side), np.float32), (side, side)
    pixels = np.stack([resize_rgb(image, explainer.preprocess) for image in images])
    x = torch.from_numpy(normalize_numpy(pixels, explainer.preprocess))
    model = copy.deepcopy(explainer.torch_model()).eval()
    for param in model.parameters():
        param.requires_grad_(True)
    layer = target_layer(model)
    shapes: list[tuple[int, ...]] = []
    hook = layer.register_forward_hook(lambda module, args, output: shapes.append(tuple(output.shape)))
    try:
        with torch.enable_grad(), GradCAM(model=model, target_layers=[layer]) as cam:
            heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    finally:
        hook.remove()
    grid = (int(shapes[-1][-2]), int(shapes[-1][-1])) if shapes and len(shapes[-1]) == 4 else (side, side)
    return np.nan_to_num(np.asarray(heat, dtype=np.float32)).clip(0.0, 1.0), grid


@dataclass
class Example:
    """What a figure needs of one image: the working image, its cells, its map on the working grid."""

    path: str
    working: np.ndarray
    labels: np.ndarray
    cam: np.ndarray
    result: Localisation


def localise_paths(explainer: Any, paths: Sequence[str | Path], predicted: Sequence[int], *,
                   batch_size: int = 16, tolerance: float = TOLERANCE_PX, progress: Progress | None = None,
                   keep: Callable[[int, Localisation], bool] | None = None
                   ) -> tuple[list[Localisation], dict[int, Example]]:
    """Segment every image, take its Grad-CAM map for its predicted class (index into explainer.classes),
    and localise. `keep(i, result)` chooses images whose working image, cells and map are returned too
    (for figures). Raises ImageError for an unreadable image, ModelError for a package without model.pt."""
    from leukoscope.data.imaging import load_rgb
    from leukoscope.inference.explain import WORKING_SIDE
    from leukoscope.segmentation.field import to_working

    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    results: list[Localisation] = []
    examples: dict[int, Example] = {}
    for start in range(0, len(paths), batch_size):
        chunk = range(start, min(start + batch_size, len(paths)))
        images = [load_rgb(paths[i], max_side=WORKING_SIDE) for i in chunk]
        maps, grid = gradcam_maps(explainer, images, [predicted[i] for i in chunk])
        for i, image, cam in zip(chunk, images, maps, strict=True):
            rgb = np.asarray(image, dtype=np.uint8)
            segmentation = segment_field(rgb, crops=False)
            result = localise_field(segmentation, cam, grid=grid, tolerance=tolerance)
            results.append(result)
            if keep is not None and keep(i, result):
                working = to_working(rgb)[0]
                examples[i] = Example(str(paths[i]), working, segmentation.labels,
                                      cam_on_grid(cam, working.shape[:2]), result)
        if progress is not None:
            progress("explaining (Grad-CAM)", chunk.stop, len(paths))
    return results, examples


# ------------------------------------------------------------------------------------------ summary


def _stat(values: list[float], how: Callable[[list[float]], Any]) -> float | None:
    return float(how(values)) if values else None


def group_summary(results: Sequence[Localisation], *, level: float = 0.95) -> dict[str, Any]:
    """n, exclusions by reason, energy inside and cell share (mean, median), the pointing game's hits with
    an exact interval and its chance level (the mean hit rate of a randomly placed peak), for one group."""
    measured = [r for r in results if r.status == "ok"]
    energy = [r.energy_inside for r in measured if r.energy_inside is not None]
    share = [r.cell_share for r in measured if r.cell_share is not None]
    chance = [r.chance_hit for r in measured if r.chance_hit is not None]
    hits = sum(bool(r.hit) for r in measured)
    return {"n_images": len(results), "n_measured": len(measured),
            "excluded": dict(sorted(Counter(r.status for r in results if r.status != "ok").items())),
            "energy_inside": {"mean": _stat(energy, np.mean), "median": _stat(energy, np.median)},
            "cell_share": {"mean": _stat(share, np.mean), "median": _stat(share, np.median)},
            "chance_hit": _stat(chance, np.mean),
            "pointing": proportion(hits, len(measured), level)}


def summarise(results: Sequence[Localisation], y: Sequence[int], predicted: Sequence[int],
              classes: Sequence[str], *, level: float = 0.95, tolerance: float = TOLERANCE_PX,
              target: float = TARGET) -> dict[str, Any]:
    """metrics.json's "localisation" section: per true class, correctly classified leukemia images (true
    class not Benign, predicted = true; every correct image when no class is called Benign) and all
    images; the target line and plain-words findings."""
    y, predicted = np.asarray(y), np.asarray(predicted)
    if not len(results) == len(y) == len(predicted):
        raise ValueError("results, labels and predictions must have one entry per image")
    benign = list(classes).index(BENIGN) if BENIGN in classes else -1
    groups = {name: group_summary([r for r, t in zip(results, y, strict=True) if t == index], level=level)
              for index, name in enumerate(classes)}
    chosen = (y != benign) & (predicted == y)
    groups[CORRECT_LEUKEMIA] = group_summary([r for r, c in zip(results, chosen, strict=True) if c], level=level)
    groups[ALL] = group_summary(results, level=level)
    pointing = groups[CORRECT_LEUKEMIA]["pointing"]
    met = None if pointing["value"] is None else bool(pointing["value"] >= target)
    blocks = [r.block_px for r in results if r.block_px is not None]
    block = max(blocks) if blocks else None
    size = f" ({block:.0f} px square)" if block is not None else ""
    summary = {"tolerance_px": tolerance, "level": level, "block_px": block,
               "method": (f"Grad-CAM of the predicted class; white cells by leukoscope.segmentation; the peak "
                          f"counts as inside when the Grad-CAM block it stands for{size}, widened by {tolerance:g} "
                          "working px (longer side 224 px), holds a white-cell pixel"),
               "groups": groups,
               "target": {"text": f"Grad-CAM peak inside a white cell for >= {target:.0%} of correctly classified "
                                  "leukemia images", "threshold": target, "met": met, **pointing},
               "looks_at_background": None if met is None else not met}
    summary["findings"] = findings(summary)
    return summary


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def findings(summary: dict[str, Any]) -> list[str]:
    """The section in plain words: the target line, and where the model looks."""
    group = summary["groups"][CORRECT_LEUKEMIA]
    point, target = group["pointing"], summary["target"]
    excluded = sum(group["excluded"].values())
    skipped = f" ({excluded} excluded: {_reasons(group['excluded'])})" if excluded else ""
    if point["n"] == 0:
        return [f"Target ({target['text']}): not measurable, no correctly classified leukemia image with a white "
                f"cell found{skipped}."]
    interval = f"exact 95% interval {_pct(point['low'])} to {_pct(point['high'])}"
    lines = [f"Target ({target['text']}): **{'met' if target['met'] else 'not met'}**: {point['k']} of "
             f"{point['n']} ({_pct(point['value'])}, {interval}){skipped}."]
    energy, share = group["energy_inside"]["median"], group["cell_share"]["median"]
    where = (f"a median {_pct(energy)} of the Grad-CAM energy falls on the white cells, which cover a median "
             f"{_pct(share)} of the field")
    if group.get("chance_hit") is not None:
        where += f" (a peak placed at random would land on a cell {_pct(group['chance_hit'])} of the time)"
    if summary["looks_at_background"]:
        lines.append(f"The model looks at the background: on {point['n'] - point['k']} of {point['n']} correctly "
                     f"classified leukemia images the Grad-CAM peak lies off every white cell, and {where}. "
                     "Its correct calls may rest on red cells, plasma, the stain or the camera's scale bar rather "
                     "than on the blasts: check the Grad-CAM overlay before trusting a call, above all on images "
                     "from another lab.")
    else:
        lines.append(f"The model looks at the white cells: the Grad-CAM peak lies on a white cell in "
                     f"{_pct(point['value'])} of correctly classified leukemia images, and {where}.")
    block = summary.get("block_px")
    if block is not None and block > COARSE_BLOCK_PX:
        lines.append(f"This model's Grad-CAM is coarse (blocks of {block:.0f} px, wider than a white cell): a "
                     "peak 'inside a cell' says little here; compare the energy on the cells with their share of "
                     "the field instead.")
    return lines


def _reasons(excluded: dict[str, int]) -> str:
    return ", ".join(f"{count} {reason}" for reason, count in excluded.items())


def table_rows(summary: dict[str, Any]) -> list[list[str]]:
    """One row per group: group, images, measured, excluded, energy inside mean / median, cell share median,
    pointing-game hits with the exact interval."""
    rows = []
    for name, g in summary["groups"].items():
        p = g["pointing"]
        hits = "n/a" if p["n"] == 0 else (f"{p['k']} of {p['n']} ({_pct(p['value'])}; "
                                          f"{_pct(p['low'])} to {_pct(p['high'])})")
        rows.append([name, str(g["n_images"]), str(g["n_measured"]), _reasons(g["excluded"]) or "0",
                     _pct(g["energy_inside"]["mean"]), _pct(g["energy_inside"]["median"]),
                     _pct(g["cell_share"]["median"]), hits, _pct(g.get("chance_hit"))])
    return rows


TABLE_HEADER = ["images", "n", "measured", "excluded", "energy inside, mean", "energy inside, median",
                "cells' share of the field, median", "peak inside a cell (exact 95% interval)",
                "peak inside by chance"]


def write_rows(out: Path, paths: Sequence[str], labels: Sequence[str], predicted: Sequence[str],
               results: Sequence[Localisation]) -> None:
    """localisation.csv: one row per image (path, label, predicted, status, energy, share, peak, hit)."""
    import csv
    import io

    from leukoscope.data.fileio import write_text

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label", "predicted", "status", "energy_inside", "cell_share", "peak_x", "peak_y",
                     "peak_distance_px", "peak_inside", "chance_inside"])
    for image, label, guess, r in zip(paths, labels, predicted, results, strict=True):
        d = asdict(r)
        peak = r.peak or ("", "")
        writer.writerow([image, label, guess, r.status, *("" if d[k] is None else f"{d[k]:.4f}"
                                                         for k in ("energy_inside", "cell_share")),
                         *peak, "" if r.peak_distance is None else r.peak_distance,
                         "" if r.hit is None else int(r.hit), "" if r.chance_hit is None else r.chance_hit])
    write_text(out, buffer.getvalue())

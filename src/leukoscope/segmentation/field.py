"""Find the nucleated white cells in one peripheral-blood-smear field: a label mask, one record and one crop
per cell.

Why classic image processing: white cells are the only strongly purple objects of a Wright/Giemsa-stained
field (chromatin takes up the basic dye: blue and red high, green low), red cells are grey-pink and the
background near white. A purple score, a per-field threshold and a little morphology find them in a few
milliseconds on one core, with no model to train or ship. Watershed on the distance transform splits
cells that touch.

The pipeline (every number is a field of `SegmentationParams`, fixed and chosen on a tuning subset of the
dataset's training part, see benchmarks/segmentation.py):

1. Checks: a grayscale image (no colour: purple cannot be told from grey) or an overexposed one (most of
   the field saturated white) gets a status and a reason, and no cells.
2. Scale: the field is resized so its longer side is `work_side` (224 px, the dataset's field), so the
   size parameters mean the same on every image; a huge image is box-reduced before anything else.
3. Score: purple = (R + B) / 2 - G, lightly smoothed, and 0 on the camera's scale-bar annotation (pure red
   text, a black bar). Threshold: Otsu's on the field, clipped to
   [`min_threshold`, `max_threshold`] so a field of red cells only does not make red cells "purple".
4. Morphology: opening, holes filled, objects under `min_cell_area` dropped, and objects whose mean
   score is under `min_cell_score` dropped (faint smudges, clumps of red-cell rims).
5. Split: the local maxima of the smoothed distance transform (one per `split_distance` radius, at least
   `split_h` px deep) seed a watershed of the inverted distance inside the mask; a component without one
   is one cell; pieces under `min_cell_area` join the neighbour they touch most.
6. Per cell: bounding box, area, nucleus fraction (the share of the cell darker than halfway between the
   field's background and the cell's darkest tenth: chromatin is darker than cytoplasm) and a crop of
   `crop_size` working pixels centred on the cell, the same scale for every cell.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from skimage import segmentation

OK = "ok"
NO_CELL = "no cell found"
GRAYSCALE = "grayscale"
OVEREXPOSED = "overexposed"


@dataclass(frozen=True)
class SegmentationParams:
    """Every tunable number of the pipeline, in working pixels (a field `work_side` px on its longer side)."""

    work_side: int = 224  # the dataset's field: a lymphocyte is ~25-40 px across at this scale
    smooth_passes: int = 1  # binomial smoothing passes on the purple score (sigma ~0.7 px each)
    min_threshold: float = 24.0  # the purple threshold never goes below this (red cells score ~0-25)
    max_threshold: float = 30.0  # ... nor above this (white cells score ~30-90)
    threshold_offset: float = 0.0  # added to Otsu's threshold before clipping
    open_radius: int = 1  # binary opening (3x3 cross) removes thin red-cell rims and noise
    min_cell_area: int = 60  # px; platelets (~20-40 px) and debris are smaller
    min_cell_score: float = 32.0  # mean purple score a cell must reach (salmon-pink red cells reach ~30)
    split_distance: int = 6  # a cell's centre is the highest distance-transform point within this radius (px)
    split_h: float = 3.0  # ... and lies at least this far inside the mask (px)
    split_smooth_passes: int = 2  # binomial smoothing passes on the distance transform before its maxima
    nucleus_quantile: float = 0.1  # the cell's darkest tenth anchors the nucleus threshold
    crop_size: int = 64  # crops are crop_size x crop_size working px, centred on the cell
    annotation_red: int = 60  # R this far above G and B is scale-bar text, not stain
    annotation_black: int = 40  # max(RGB) under this is the scale bar itself (nuclei stay above ~60)
    annotation_grow: int = 3  # px added around annotation pixels (JPEG colour fringes)
    gray_chroma: float = 12.0  # 99% of pixels with max(RGB) - min(RGB) under this: grayscale
    overexposed_level: int = 250  # a pixel with every channel at or above this is saturated ...
    overexposed_fraction: float = 0.7  # ... and a field with this share of saturated pixels is overexposed


PARAMS = SegmentationParams()


@dataclass(frozen=True)
class CellRecord:
    """One cell: its label in the mask, bounding box (x0, y0, x1, y1; working px, x1/y1 exclusive), area
    (working px) and the share of it that is nucleus."""

    cell_id: int
    bbox: tuple[int, int, int, int]
    area: int
    nucleus_fraction: float
    centroid: tuple[float, float]  # (x, y), working px


@dataclass
class FieldSegmentation:
    """The result for one field. `labels` is 0 for background and 1..n for the n cells of `cells`; all
    coordinates are in the working image (`working_size`), `scale` input pixels per working pixel."""

    status: str
    reason: str
    labels: np.ndarray
    cells: list[CellRecord] = field(default_factory=list)
    crops: list[np.ndarray] = field(default_factory=list)
    working_size: tuple[int, int] = (0, 0)  # (width, height)
    scale: float = 1.0
    threshold: float | None = None

    @property
    def mask(self) -> np.ndarray:
        """Foreground (any cell) as booleans."""
        return self.labels > 0


def _as_rgb(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 from 8/16-bit or float RGB, RGBA or 2-D grey input."""
    array = np.asarray(rgb)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or min(array.shape[:2]) < 1:
        raise ValueError(f"expected an HxWx3 RGB array, got shape {array.shape}")
    array = array[..., :3]
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating):
            scale = 255.0 if float(array.max(initial=0)) <= 1.0 else 1.0  # [0, 1] floats or [0, 255] floats
        else:
            scale = 255.0 / 65535.0 if int(array.max(initial=0)) > 255 else 1.0  # 16-bit camera data
        array = np.clip(array.astype(np.float32) * scale, 0, 255).round().astype(np.uint8)
    return array


def to_working(rgb: np.ndarray, work_side: int = PARAMS.work_side) -> tuple[np.ndarray, float]:
    """The field resized so its longer side is `work_side`; a huge image is box-reduced first (cheap)."""
    height, width = rgb.shape[:2]
    longest = max(height, width)
    if longest == work_side:
        return rgb, 1.0
    scale = longest / work_side
    size = (max(1, round(width / scale)), max(1, round(height / scale)))
    image = Image.fromarray(rgb)
    factor = longest // (2 * work_side)
    if factor >= 2:
        image = image.reduce(factor)
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR)), scale


def check_field(rgb: np.ndarray, params: SegmentationParams = PARAMS) -> tuple[str, str]:
    """(status, reason) for images the pipeline cannot read colour from; (OK, "") otherwise."""
    sample = rgb[:: max(1, rgb.shape[0] // 256), :: max(1, rgb.shape[1] // 256)]
    red, green, blue = sample[..., 0], sample[..., 1], sample[..., 2]
    lowest = np.minimum(np.minimum(red, green), blue)
    chroma = np.maximum(np.maximum(red, green), blue) - lowest  # uint8: max >= min, no wrap-around
    saturated = float((lowest >= params.overexposed_level).mean())
    if saturated >= params.overexposed_fraction:  # first: a white-out has no colour either
        return OVEREXPOSED, f"overexposed: {saturated:.0%} of the field is saturated white"
    if float((chroma >= params.gray_chroma).mean()) < 0.01:  # 99% of pixels without colour
        return GRAYSCALE, "grayscale image: white cells are found by their stain colour, which it lacks"
    return OK, ""


def _smooth(values: np.ndarray, passes: int) -> np.ndarray:
    """Binomial [1, 2, 1] / 4 smoothing along both axes, `passes` times (a Gaussian of sigma ~0.7 px per
    pass, edges replicated); plain array slicing, ~5x cheaper than scipy's gaussian_filter on a field."""
    for _ in range(passes):
        padded = np.pad(values, 1, mode="edge")
        values = (padded[:-2] + 2 * padded[1:-1] + padded[2:]) * 0.25
        values = (values[:, :-2] + 2 * values[:, 1:-1] + values[:, 2:]) * 0.25
    return values


def annotation(rgb: np.ndarray, params: SegmentationParams = PARAMS) -> np.ndarray:
    """Pixels no stain makes: pure red (the camera's scale-bar text: R far above both G and B) and near
    black (the bar and the label's text), grown by `annotation_grow` px over the JPEG colour fringes."""
    array = rgb.astype(np.int16)
    red, green, blue = array[..., 0], array[..., 1], array[..., 2]
    marks = ((red - green > params.annotation_red) & (red - blue > params.annotation_red)) | (
        np.maximum(np.maximum(red, green), blue) < params.annotation_black)
    for _ in range(params.annotation_grow):
        marks = _dilate_cross(marks)
    return marks


def purple_score(rgb: np.ndarray, passes: int = PARAMS.smooth_passes, params: SegmentationParams = PARAMS
                 ) -> np.ndarray:
    """(R + B) / 2 - G, smoothed: high on stained chromatin, near 0 on background and red cells; 0 on
    scale-bar annotations."""
    array = rgb.astype(np.float32)
    score = _smooth((array[..., 0] + array[..., 2]) * 0.5 - array[..., 1], passes)
    score[annotation(rgb, params)] = 0.0
    return score


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold over integer bins from -255 to 255 (the score's range): the split that maximises
    the between-class variance."""
    bins = np.clip(np.rint(values), -255, 255).astype(np.int32).ravel() + 255
    counts = np.bincount(bins, minlength=511).astype(np.float64)
    centres = np.arange(-255, 256, dtype=np.float64)
    weight = np.cumsum(counts)
    mass = np.cumsum(counts * centres)
    total, total_mass = weight[-1], mass[-1]
    rest = total - weight
    valid = (weight > 0) & (rest > 0)
    if not valid.any():
        return float(values.max())
    between = np.zeros_like(weight)
    between[valid] = (total_mass * weight[valid] - mass[valid] * total) ** 2 / (weight[valid] * rest[valid])
    return float(centres[int(np.argmax(between))]) + 0.5


def _cross_step(mask: np.ndarray, combine: np.ufunc) -> np.ndarray:
    padded = np.pad(mask, 1, mode="edge")
    return combine.reduce([mask, padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]])


def _dilate_cross(mask: np.ndarray) -> np.ndarray:
    return _cross_step(mask, np.logical_or)


def _open_cross(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary opening with a 3x3 cross, `radius` times each way, by array shifts."""
    for _ in range(radius):
        mask = _cross_step(mask, np.logical_and)
    for _ in range(radius):
        mask = _cross_step(mask, np.logical_or)
    return mask


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Background regions that do not touch the field's edge become foreground (nuclei with pale spots)."""
    background, count = ndi.label(~mask)
    edge = np.zeros(count + 1, bool)
    for line in (background[0], background[-1], background[:, 0], background[:, -1]):
        edge[line] = True
    edge[0] = True  # label 0 is the foreground itself
    return ~edge[background] | mask


def foreground(score: np.ndarray, params: SegmentationParams = PARAMS) -> tuple[np.ndarray, float]:
    """The cell mask before splitting as connected components (0 background, ids not consecutive), and the
    threshold used."""
    otsu = otsu_threshold(score)
    threshold = float(np.clip(otsu + params.threshold_offset, params.min_threshold, params.max_threshold))
    mask = fill_holes(_open_cross(score > threshold, params.open_radius))
    labels, count = ndi.label(mask)
    if count == 0:
        return labels, threshold
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    sums = np.bincount(labels.ravel(), weights=score.ravel(), minlength=count + 1)
    keep = (areas >= params.min_cell_area) & (sums >= params.min_cell_score * areas)
    keep[0] = False
    labels[~keep[labels]] = 0
    return labels, threshold


def _distance(components: np.ndarray) -> np.ndarray:
    """Euclidean distance to the background, computed per component inside its bounding box (the field is
    mostly background: ~3x cheaper than one transform of the whole field)."""
    distance = np.zeros(components.shape, np.float32)
    for index, box in enumerate(ndi.find_objects(components), start=1):
        if box is None:
            continue
        rows, cols = box
        box = (slice(max(0, rows.start - 1), rows.stop + 1), slice(max(0, cols.start - 1), cols.stop + 1))
        inside = components[box] == index
        distance[box][inside] = ndi.distance_transform_edt(inside)[inside]
    return distance


def split_cells(components: np.ndarray, params: SegmentationParams = PARAMS) -> np.ndarray:
    """One label per cell from `foreground`'s components: a watershed of the inverted distance transform
    from its local maxima (one per `split_distance` radius, at least `split_h` px deep); a component
    without such a maximum is one cell."""
    mask = components > 0
    count = int(components.max(initial=0))
    if count == 0:
        return np.zeros(mask.shape, np.int32)
    distance = _smooth(_distance(components), params.split_smooth_passes)
    window = 2 * params.split_distance + 1
    neighbourhood = ndi.maximum_filter1d(ndi.maximum_filter1d(distance, window, axis=0), window, axis=1)
    peaks = (distance >= neighbourhood) & (distance >= params.split_h) & mask
    markers, found = ndi.label(peaks, structure=np.ones((3, 3), bool))
    owner = np.zeros(found + 1, np.int64)  # the component each marker lies in
    owner[markers[peaks]] = components[peaks]
    several = np.bincount(owner[1:], minlength=count + 1) >= 2
    several[0] = False
    labels = np.where(mask, components + found, 0).astype(np.int32)  # one cell per component ...
    boxes = ndi.find_objects(components)
    for index in np.flatnonzero(several):  # ... except where it holds several maxima: watershed in its box
        box = boxes[index - 1]
        inside = components[box] == index
        split = segmentation.watershed(-distance[box], np.where(inside, markers[box], 0), mask=inside)
        labels[box][inside] = split[inside]
    return _merge_small(labels, params.min_cell_area)


def _merge_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Give watershed pieces under `min_area` to the neighbour they touch most (drop isolated ones), then
    number the cells 1..n."""
    areas = np.bincount(labels.ravel())
    boxes = ndi.find_objects(labels)
    for small in np.flatnonzero((areas > 0) & (areas < min_area)):
        if small == 0 or boxes[small - 1] is None:
            continue
        rows, cols = boxes[small - 1]
        box = (slice(max(0, rows.start - 1), rows.stop + 1), slice(max(0, cols.start - 1), cols.stop + 1))
        window = labels[box]  # a view: writing to it writes to labels
        piece = window == small
        neighbours = window[_dilate_cross(piece) & ~piece]
        neighbours = neighbours[(neighbours != 0) & (neighbours != small)]
        window[piece] = np.bincount(neighbours).argmax() if neighbours.size else 0
    present = np.bincount(labels.ravel(), minlength=len(areas)) > 0
    present[0] = False
    lookup = np.zeros(len(areas), np.int32)
    lookup[present] = np.arange(1, int(present.sum()) + 1, dtype=np.int32)
    return lookup[labels]


def _crop(rgb: np.ndarray, centre: tuple[float, float], size: int) -> np.ndarray:
    """A size x size window of `rgb` centred on (x, y), padded with white where it leaves the field."""
    half = size // 2
    x0, y0 = round(centre[0]) - half, round(centre[1]) - half
    out = np.full((size, size, 3), 255, np.uint8)
    sy0, sx0 = max(0, y0), max(0, x0)
    sy1, sx1 = min(rgb.shape[0], y0 + size), min(rgb.shape[1], x0 + size)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
    return out


@functools.lru_cache(maxsize=8)
def _coordinates(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of every pixel, flattened (cached: every field of a batch has the same shape)."""
    ys, xs = np.divmod(np.arange(shape[0] * shape[1]), shape[1])
    return ys, xs


def describe(rgb: np.ndarray, labels: np.ndarray, params: SegmentationParams = PARAMS, *, with_crops: bool = True
             ) -> tuple[list[CellRecord], list[np.ndarray]]:
    """One record and one crop per label of `labels`."""
    grey = rgb[..., 0] * np.float32(0.299) + rgb[..., 1] * np.float32(0.587) + rgb[..., 2] * np.float32(0.114)
    outside = grey[::2, ::2][labels[::2, ::2] == 0]  # every 4th pixel: the median of a bright background
    background = float(np.median(outside)) if outside.size else 255.0
    records, crops = [], []
    count = int(labels.max())
    flat = labels.ravel()
    areas = np.bincount(flat, minlength=count + 1)
    ys, xs = _coordinates(labels.shape)
    cxs = np.bincount(flat, weights=xs, minlength=count + 1) / np.maximum(areas, 1)
    cys = np.bincount(flat, weights=ys, minlength=count + 1) / np.maximum(areas, 1)
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        values = grey[box][labels[box] == index]
        dark = float(np.partition(values, int(params.nucleus_quantile * (values.size - 1)))[
            int(params.nucleus_quantile * (values.size - 1))])
        nucleus = float((values < (dark + background) / 2).mean()) if background > dark else 1.0
        cx, cy = float(cxs[index]), float(cys[index])
        bbox = (box[1].start, box[0].start, box[1].stop, box[0].stop)
        records.append(CellRecord(index, bbox, int(areas[index]), round(nucleus, 4), (round(cx, 2), round(cy, 2))))
        if with_crops:
            crops.append(_crop(rgb, (cx, cy), params.crop_size))
    return records, crops


def segment_field(rgb: np.ndarray, params: SegmentationParams = PARAMS, *, crops: bool = True) -> FieldSegmentation:
    """Find the white cells of one field (HxWx3 RGB, any size). Never raises for a readable image: a field
    without cells, a grayscale or an overexposed one comes back with its status and reason, and no cells."""
    image = _as_rgb(rgb)
    working, scale = to_working(image, params.work_side)
    size = (working.shape[1], working.shape[0])
    empty = np.zeros(working.shape[:2], np.int32)
    status, reason = check_field(working, params)
    if status != OK:
        return FieldSegmentation(status, reason, empty, working_size=size, scale=scale)
    score = purple_score(working, params.smooth_passes, params)
    components, threshold = foreground(score, params)
    labels = split_cells(components, params)
    if labels.max() == 0:
        return FieldSegmentation(NO_CELL, "no white cell found in the field", empty, working_size=size,
                                 scale=scale, threshold=threshold)
    records, cell_crops = describe(working, labels, params, with_crops=crops)
    return FieldSegmentation(OK, "", labels, records, cell_crops, size, scale, threshold)

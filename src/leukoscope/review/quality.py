"""Image-quality rules: which images show nothing to judge, and which a human should check because of how
they were taken (blurry, far from the training size or shape, heavily compressed).

A network has no reason to be uncertain about a blurry image or a blank file, so these rules look at the
pixels and the file, never at the network's outputs. The unusable checks (blank, noise, a smooth gradient)
are absolute, the same for every lab; the blur threshold is fitted on the training images, because the
sharpness of a good smear depends on magnification and camera. Each rule returns its `Reason`s
(leukoscope.review.reasons).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from leukoscope.review import reasons
from leukoscope.review.reasons import Reason

SIZE_RATIO_RANGE = (0.5, 4.0)  # shorter side / training side outside this: small_image or large_image
MAX_ASPECT_RATIO = 1.5  # longer side / shorter side above this: not_square
MIN_SIDE_FRACTION = 1 / 8  # shorter side under training side / 8 (28 px at 224): too_small, unusable
MIN_JPEG_QUALITY = 40.0  # the training JPEGs are quality 95; below this, texture is visibly destroyed

# Checks that make an image unusable (no class at all) are absolute, not fitted: they tell a photograph of
# cells from a blank file, random noise or a smooth gradient, whatever the lab. On all 2,796 images of the
# ALL dataset, contrast is >= 13.6, neighbour correlation >= 0.83 and cell-scale structure >= 7.0, while
# noise has correlation < 0.2 and flat colours or gradients structure < 0.5: the defaults sit between,
# about 3x from the dataset (tests/review/test_quality.py::test_no_image_of_the_dataset_is_unusable checks
# all of them). All four statistics together cost well under a millisecond for a 224 px image on one core.
DEFAULT_NOISE_THRESHOLD = 0.5
DEFAULT_STRUCTURE_THRESHOLD = 2.0


@dataclass(frozen=True)
class QualityThresholds:
    """Below `sharpness` an image is too blurry (review); below `contrast` nearly uniform, below `correlation`
    noise, below `structure` without cell-like detail (all three unusable). Model-input scale."""

    sharpness: float
    contrast: float
    correlation: float = DEFAULT_NOISE_THRESHOLD
    structure: float = DEFAULT_STRUCTURE_THRESHOLD

    def to_dict(self) -> dict[str, float]:
        return {"blur_threshold": self.sharpness, "uniform_threshold": self.contrast,
                "noise_threshold": self.correlation, "structure_threshold": self.structure}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> QualityThresholds:
        """From model.json's `review` section; a missing blur threshold (0) disables the blur check."""
        return cls(float(values.get("blur_threshold", 0.0)), float(values.get("uniform_threshold", 2.0)),
                   float(values.get("noise_threshold", DEFAULT_NOISE_THRESHOLD)),
                   float(values.get("structure_threshold", DEFAULT_STRUCTURE_THRESHOLD)))


_WORK = threading.local()


def _work_images(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Two float32 work images for this thread, kept from one image to the next. Fresh ones cost more than
    the arithmetic: the allocator hands their memory back to the system between images, and touching it
    again page-faults (0.65 instead of 0.2 ms for the grey image alone, measured)."""
    work = getattr(_WORK, "images", None)
    if work is None or work[0].shape != shape:
        work = _WORK.images = (np.empty(shape, np.float32), np.empty(shape, np.float32))
    return work


def _planes(rgb: np.ndarray) -> np.ndarray:
    """The first three channels of an HxWxC uint8 image as contiguous planes, in this thread's kept buffer.
    One transposing copy costs about what one strided cast of a single channel to float32 does, and all
    the arithmetic after it runs on contiguous data."""
    shape = (3, *rgb.shape[:2])
    planes = getattr(_WORK, "planes", None)
    if planes is None or planes.shape != shape:
        planes = _WORK.planes = np.empty(shape, np.uint8)
    np.copyto(planes, np.moveaxis(rgb[..., :3], 2, 0))
    return planes


def _gray(rgb: np.ndarray, out: np.ndarray | None = None, spare: np.ndarray | None = None) -> np.ndarray:
    """ITU-R 601 luma as float32 (into `out`, using `spare`, when given), one channel at a time and in
    place, from contiguous channel planes: ~3x faster than mixed uint8/float arithmetic on the interleaved
    image, and the same values to the bit (the same float32 products and sums, in the same order)."""
    g = np.empty(rgb.shape[:2], np.float32) if out is None else out
    part = np.empty_like(g) if spare is None else spare
    planes = _planes(rgb) if rgb.dtype == np.uint8 else np.moveaxis(rgb[..., :3], 2, 0)
    np.copyto(g, planes[0])
    g *= np.float32(0.299)
    for channel, weight in ((1, 0.587), (2, 0.114)):
        np.copyto(part, planes[channel])
        part *= np.float32(weight)
        g += part
    return g


def _centred(g: np.ndarray) -> np.ndarray:
    """`g` minus (about) its mean, in place, so that float32 sums of squares and products do not cancel.
    The mean of every 8th pixel is near enough, and cheaper; the statistics allow for what is left."""
    if g.size:
        g -= np.float32(g[::8, ::8].mean())
    return g


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Sum of a * b in one pass (BLAS sdot: single-threaded at these sizes, 3x faster than einsum)."""
    return float(np.dot(a, b))


def _sharpness(g: np.ndarray, spare: np.ndarray | None = None) -> float:
    """Variance of the Laplacian (computed in `spare`, an array of g's size, when given)."""
    if g.shape[0] < 3 or g.shape[1] < 3:
        return 0.0
    # On the flattened image every neighbour is a contiguous slice (2x faster than 2-D views); rows 1..H-2
    # are computed whole, and the first and last column, whose left/right neighbours wrap around, dropped.
    h, w = g.shape
    f = np.ascontiguousarray(g).ravel()
    end = f.size - w
    lap = np.multiply(f[w:end], np.float32(4), out=None if spare is None else spare.ravel()[:end - w])
    lap -= f[:end - w]
    lap -= f[2 * w:]
    lap -= f[w - 1:end - 1]
    lap -= f[w + 1:end + 1]
    rows = lap.reshape(h - 2, w)
    rows[:, 0] = rows[:, -1] = 0  # the wrapped-around columns add nothing to the sums below
    count = (h - 2) * (w - 2)
    mean = float(lap.sum()) / count
    return max(_dot(lap, lap) / count - mean * mean, 0.0)


def image_stats(rgb: np.ndarray) -> tuple[float, float]:
    """(sharpness, contrast) of an HxWx3 uint8 image: variance of the Laplacian and grey-level std.

    Measured on the model's input (after resizing), since that is what the model sees.
    """
    c = _centred(_gray(rgb))
    return _sharpness(c), _std(*_moments(c))


def _moments(c: np.ndarray) -> tuple[int, float, float]:
    """(count, sum, sum of squares) of an image, the sums that its std and neighbour correlations share."""
    flat = np.ascontiguousarray(c).ravel()
    return flat.size, float(flat.sum()), _dot(flat, flat)


def _std(count: int, total: float, squares: float) -> float:
    if not count:
        return 0.0
    mean = total / count
    return float(np.sqrt(max(squares / count - mean * mean, 0.0)))


def _lag_correlation(c: np.ndarray, total: float, squares: float) -> float:
    """Mean Pearson correlation of each pixel of the (roughly centred) grey image `c` (sum `total`, sum of
    squares `squares`) with its right and its lower neighbour, from dot products of the flattened image with
    itself shifted by one pixel and by one row, corrected for what the shifts add or leave out at the edges:
    no shifted copies."""
    h, w = c.shape
    c = np.ascontiguousarray(c)
    flat = c.ravel()
    tolerance = 1e-6 * c.size  # a grey-level std under 0.001: flat, nothing to correlate
    values = []
    for first, last, pairs, shift in ((c[:, 0], c[:, -1], h * (w - 1), 1), (c[0], c[-1], (h - 1) * w, w)):
        if pairs <= 0:
            continue
        products = _dot(flat[shift:], flat[:-shift])
        if shift == 1:  # the flattened shift also pairs the last pixel of each row with the next row's first
            products -= _dot(c[1:, 0], c[:-1, -1])
        sum_a, sum_b = total - float(first.sum()), total - float(last.sum())  # a: all but first, b: all but last
        var_a = squares - _dot(first, first) - sum_a * sum_a / pairs
        var_b = squares - _dot(last, last) - sum_b * sum_b / pairs
        if var_a > tolerance and var_b > tolerance:
            values.append((products - sum_a * sum_b / pairs) / float(np.sqrt(var_a * var_b)))
    return sum(values) / len(values) if values else 1.0  # np.mean of a short list costs more than the dots


def neighbour_correlation(rgb: np.ndarray) -> float:
    """Mean correlation of each grey pixel with its right and lower neighbour: about 0.9 for photographs,
    about 0 for random noise. 1.0 when there is nothing to correlate (flat or a single pixel)."""
    c = _centred(_gray(rgb))
    return _lag_correlation(c, *_moments(c)[1:])


# Cell scale: Gaussians of sigma side/112 and side/28 (2 and 8 px at 224), judged away from the borders.
_FINE, _COARSE = 112, 28


@functools.lru_cache(maxsize=32)
def _blur_rows(n: int, sigma: float, margin: int) -> np.ndarray:
    """The rows of a 1-D Gaussian blur of `n` samples (edges replicated) for outputs margin..n-margin-1, as
    a matrix: a separable 2-D blur is then two small matrix products."""
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (taps / sigma) ** 2) if sigma > 0 else (taps == 0).astype(np.float64)
    outputs = np.arange(margin, n - margin)
    matrix = np.zeros((len(outputs), n))
    rows = np.repeat(np.arange(len(outputs)), len(taps))
    np.add.at(matrix, (rows, np.clip(outputs[:, None] + taps, 0, n - 1).ravel()), np.tile(weights / weights.sum(), len(outputs)))
    matrix = matrix.astype(np.float32)
    matrix.flags.writeable = False  # shared by every call through the cache
    return matrix


def _block_sums(g: np.ndarray, factor: int) -> np.ndarray:
    """Sums over factor x factor blocks (the image cropped to whole blocks)."""
    h, w = g.shape[0] // factor, g.shape[1] // factor
    rows = g[:h * factor, :w * factor].reshape(h, factor, w * factor).sum(axis=1)  # fast: contiguous rows
    out = rows[:, 0::factor].copy()
    for j in range(1, factor):
        out += rows[:, j::factor]
    return out


def _structure(g: np.ndarray) -> float:
    """Difference-of-Gaussians std of grey image `g` (see cell_structure), at 1/4 resolution for a 224 px
    input: the block mean is itself a blur (variance (k^2-1)/12 px^2), which the Gaussians then complete,
    and the DoG has no detail finer than the reduced grid keeps. At 224 px, 4 products of <= 56x56 matrices
    replace two full-size blurs (~20x faster), each small enough that OpenBLAS keeps it on one thread. On
    the ALL dataset the values are 1.5-13% above those of the earlier full-size Pillow blurs (correlation
    0.998; minimum 7.0 instead of 6.4), so the default threshold (2.0) did not move."""
    side = min(g.shape)
    factor = max(1, side // 56)
    reduced = _block_sums(g, factor) if factor > 1 else g
    already = (factor * factor - 1) / 12
    margin = -(-min(int(side / 14), (side - 1) // 2) // factor)
    blurred = []
    for scale in (_FINE, _COARSE):
        sigma = round(float(np.sqrt(max((side / scale) ** 2 - already, 0.0))) / factor, 6)
        rows, cols = _blur_rows(reduced.shape[0], sigma, margin), _blur_rows(reduced.shape[1], sigma, margin)
        blurred.append(rows @ reduced @ cols.T)
    return _std(*_moments(blurred[0] - blurred[1])) / (factor * factor)


def cell_structure(rgb: np.ndarray) -> float:
    """Grey-level std of a difference of Gaussians at cell scale (sigma 1/112 and 1/28 of the side: 2 and
    8 px at 224), away from the borders: cells and nuclei give ~7-28; flat colours and smooth gradients ~0."""
    return _structure(_gray(rgb))


def fit_quality_thresholds(stats: np.ndarray) -> QualityThresholds:
    """Thresholds from the (sharpness, contrast) of training images: a quarter of their 1st percentile.

    Relative to the training data, because the sharpness of a good smear depends on magnification and
    camera; the absolute floors keep a degenerate training set from disabling the checks.
    """
    stats = np.asarray(stats, dtype=np.float64).reshape(-1, 2)
    if len(stats) == 0:
        return QualityThresholds(5.0, 2.0)
    sharp = 0.25 * float(np.quantile(stats[:, 0], 0.01))
    contrast = 0.25 * float(np.quantile(stats[:, 1], 0.01))
    return QualityThresholds(max(sharp, 1.0), max(contrast, 2.0))


def quality_reasons(rgb: np.ndarray, thresholds: QualityThresholds, *, native: np.ndarray | None = None) -> list[Reason]:
    """Reasons from pixel statistics alone (empty when the image looks usable): the first unusable one
    (uniform, noise, no cell-like detail), else `blurry` when it applies.

    `rgb` is the model input; `native` the decoded image when it is smaller than that, so that noise is
    judged before upsampling smooths it (a downsized image keeps its noise uncorrelated).
    """
    work, spare = _work_images(rgb.shape[:2])
    c = _centred(_gray(rgb, work, spare))  # one grey image for all four statistics
    count, total, squares = _moments(c)
    contrast = _std(count, total, squares)
    if contrast < thresholds.contrast:
        return [reasons.uniform(contrast, thresholds.contrast)]
    correlation = _lag_correlation(c, total, squares) if native is None else neighbour_correlation(native)
    if correlation < thresholds.correlation:
        return [reasons.noise(correlation, thresholds.correlation)]
    structure = _structure(c)
    if structure < thresholds.structure:
        return [reasons.no_cells(structure, thresholds.structure)]
    sharpness = _sharpness(c, spare)
    if sharpness < thresholds.sharpness:
        return [reasons.blurry(sharpness, thresholds.sharpness)]
    return []


def size_reasons(width: int, height: int, training_size: int,
                 ratio_range: tuple[float, float] = SIZE_RATIO_RANGE) -> list[Reason]:
    """`small_image` or `large_image` when the shorter side is far from the training side (the cells are then
    at another scale than the model learned), else `not_square` when resizing would distort the cells."""
    ratio = min(width, height) / training_size
    if ratio < ratio_range[0]:
        return [reasons.small_image(width, height, training_size)]
    if ratio > ratio_range[1]:
        return [reasons.large_image(width, height, training_size)]
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        return [reasons.not_square(width, height)]
    return []

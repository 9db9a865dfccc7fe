"""When to flag an image for review: temperature, confidence threshold, out-of-distribution and image-quality
thresholds, fitted from a network's outputs on the training and validation parts (`fit_review`, at export),
and read back from a package's model.json (`ReviewThresholds`, when a Predictor loads).

Under a second lab's stain and optics the network can call a leukemia image Benign with high confidence,
the one error that must never go unflagged. `fit_shift_rules` chooses, by SHIFT_RULE (fixed before it was
measured), an asymmetric confidence rule (a Benign call needs more confidence than a leukemia call) and a
cell-scale range, on the val part and seeded shifted copies of it (leukoscope.data.shifts), never the
test part.

Kept apart from the export so that the rules that decide what a reviewer sees are one small module with
no model, file or backend in it: arrays in, thresholds out, testable on synthetic numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from leukoscope.review import reasons as why
from leukoscope.review.benign_check import BenignCheck
from leukoscope.review.calibration import fit_temperature, softmax
from leukoscope.review.ood import DEFAULT_QUANTILE, OOD_FILE, MahalanobisOOD
from leukoscope.review.quality import (
    MIN_JPEG_QUALITY,
    MIN_SIDE_FRACTION,
    SIZE_RATIO_RANGE,
    QualityThresholds,
    cell_structure,
    fit_quality_thresholds,
    image_stats,
    neighbour_correlation,
)
from leukoscope.review.realign import RealignRule
from leukoscope.review.reasons import Reason

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_BENIGN_CLASS = "Benign"
BENIGN_MARGIN = 2.0  # the Benign threshold's residual 1 - t is at most half the smallest one of a missed leukemia
MAX_FLAG_RISE = 0.05  # the shift rules may raise the unshifted val part's flagged share by at most 5 points
SCALE_QUANTILES = (0.005, 0.995)  # cell scales of the training images inside this range are not flagged
SHIFT_RULE = (
    "Chosen on the val part and seeded shifted copies of it (leukoscope.data.shifts: the part as is, one copy "
    "per named shift, and copies with a random composite shift per image), never on the test part; network, "
    "temperature, OOD statistics and threshold, quality thresholds and the symmetric confidence threshold "
    "stay as they are. A leukemia image called Benign counts as caught when any review reason flags it. "
    "(a) benign_confidence_threshold = 1 - m / 2 (residual rounded down to 2 significant digits, never below "
    "the confidence threshold), m = the smallest 1 - P(Benign) among leukemia images called Benign that no "
    "other reason flags; cost cap: the unshifted val part's flagged share may rise by at most 5 points, "
    "else the largest threshold within the cap is used and the misses left are reported. Candidates (a), "
    "(a) + (b) TTA disagreement and (a) + (c) a cell-scale range (training images' 0.5-99.5% quantiles) are "
    "compared: the fewest misses on the shifted val set within the cap wins, then the lowest flagged share "
    "of the unshifted val part, then the simplest.")
TARGET_CONFIDENT_ACCURACY = 0.995
REVIEW_FRACTION = 0.02  # at least this share of in-distribution val images is flagged by confidence
NO_VAL_CONFIDENCE_THRESHOLD = 0.9
DEFAULT_CONFIDENCE_THRESHOLD = 0.9  # a package or run without a fitted threshold


@dataclass(frozen=True)
class ReviewThresholds:
    """model.json's `review` section as a Predictor applies it. Keys a package lacks (older packages, run
    folders) take the defaults; the confidence threshold, the OOD threshold (in ood.npz) and the quality
    thresholds are fitted by `fit_review`."""

    confidence: float
    quality: QualityThresholds
    min_jpeg_quality: float
    size_ratio_range: tuple[float, float]
    min_side: int  # shorter side below this: too_small (unusable)
    benign_confidence: float = 0.0  # a Benign call below this (and above `confidence`): benign_low_confidence
    benign_class: str = DEFAULT_BENIGN_CLASS
    cell_scale_range: tuple[float, float] | None = None  # cell_scale outside it: review (None: no check)
    realign: RealignRule | None = None  # views to try on OOD-flagged images (leukoscope.review.realign)
    benign_check: BenignCheck | None = None  # views an unflagged Benign call must hold at (review.benign_check)

    @classmethod
    def from_dict(cls, review: Mapping[str, Any], training_size: int) -> ReviewThresholds:
        """From model.json's `review` (possibly empty) for a model trained on `training_size` px images."""
        low, high = review.get("size_ratio_range", SIZE_RATIO_RANGE)
        confidence = float(review.get("confidence_threshold", DEFAULT_CONFIDENCE_THRESHOLD))
        return cls(confidence=confidence, quality=QualityThresholds.from_dict(review),
                   min_jpeg_quality=float(review.get("min_jpeg_quality", MIN_JPEG_QUALITY)),
                   size_ratio_range=(float(low), float(high)),
                   min_side=int(review.get("min_side", max(2, round(training_size * MIN_SIDE_FRACTION)))),
                   benign_confidence=float(review.get("benign_confidence_threshold", confidence)),
                   benign_class=str(review.get("benign_class", DEFAULT_BENIGN_CLASS)),
                   cell_scale_range=_pair(review.get("cell_scale_range")),
                   realign=RealignRule.from_dict(review["realign"]) if review.get("realign") is not None else None,
                   benign_check=(BenignCheck.from_dict(review["benign_check"])
                                 if review.get("benign_check") is not None else None))


def _pair(value: Any) -> tuple[float, float] | None:
    return None if value is None else (float(value[0]), float(value[1]))


def choose_confidence_threshold(probs: np.ndarray, labels: np.ndarray, *,
                                target: float = TARGET_CONFIDENT_ACCURACY, low: float = 0.5,
                                high: float = 0.99, review_fraction: float = REVIEW_FRACTION) -> float:
    """The smallest threshold in [low, high] (steps of 0.01) at which the images at or above it reach
    `target` accuracy; `high` when none does. It is never below the `review_fraction` quantile of the
    confidences: a validation part with no (or very few) errors says little about where errors will
    fall, so the least confident couple of percent of ordinary images still get a human look.

    >>> p = np.array([[0.95, 0.05], [0.6, 0.4], [0.3, 0.7]])
    >>> choose_confidence_threshold(p, np.array([0, 1, 1]))
    0.61
    """
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    floor = low
    if review_fraction > 0 and len(confidence):
        floor = min(high, math.ceil(round(float(np.quantile(confidence, review_fraction)) * 100, 6)) / 100)
    for t in np.round(np.arange(low, high + 1e-9, 0.01), 2):
        kept = confidence >= t
        if not kept.any():
            break
        if correct[kept].mean() >= target:
            return float(max(t, floor))
    return float(high)


# ------------------------------------------------------------------------------------------- cell scale

SCALE_SIGMAS = np.exp(np.linspace(np.log(1.0), np.log(32.0), 61))  # px, at the model's input size
_SCALE_TABLES: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _scale_tables(height: int, width: int, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Radius bin of every rfft2 frequency, the LoG energy weight of each bin at each sigma (in input px;
    the image was reduced `step` x), and a Hann window."""
    key = (height, width, step)
    if key not in _SCALE_TABLES:
        fy, fx = np.fft.fftfreq(height), np.fft.rfftfreq(width)
        radius = np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
        n = max(height, width)
        bins = np.minimum((radius * 2 * n).astype(np.int64), n).ravel()
        a = 4 * np.pi ** 2 * ((np.arange(n + 1) + 0.5) / (2 * n)) ** 2
        weights = np.stack([(s * s * a) ** 2 * np.exp(-a * s * s) for s in SCALE_SIGMAS / step])
        window = np.outer(np.hanning(height), np.hanning(width)).astype(np.float32)
        _SCALE_TABLES[key] = (bins, weights, window)
    return _SCALE_TABLES[key]


def cell_scale(rgb: np.ndarray | Image.Image) -> float:
    """The image's dominant blob size (px at the model input): the sigma at which the scale-normalised
    Laplacian of Gaussian has the most energy, from one FFT of the grey image (reduced 2x by block means
    when at least 64 px a side: the smallest sigmas that matter are several px). In a smear field the red
    cells dominate, so it follows the magnification (x2 doubles it). Well under a millisecond at 224 px.

    `rgb` may also be the RGB PIL image the array came from (the same result, without copying the pixels
    back into Pillow)."""
    from PIL import Image

    image = rgb if isinstance(rgb, Image.Image) else Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    step = 2 if min(image.size) >= 64 else 1
    grey = np.array(image.convert("L").reduce(step), np.float32)  # ITU-R 601 luma, box means
    bins, weights, window = _scale_tables(*grey.shape, step)
    grey -= grey.mean()  # in place: the same float32 values as (grey - mean) * window, without temporaries
    grey *= window
    # numpy's FFT, not scipy's: scipy.fft is ~80 us an image faster here, but importing it (it pulls in
    # scipy.special) cost `leukoscope predict` 0.5-0.9 s of start-up, what 6,000+ images would win back. The
    # scales are the same: numpy 2 transforms float32 in float32, and all 10,485 dataset images and resized
    # copies gave equal values both ways (scratch comparison).
    spectrum = np.fft.fft(np.fft.rfft(grey, axis=1), axis=0)
    power = spectrum.real ** 2 + spectrum.imag ** 2
    power[:, 1:(grey.shape[1] + 1) // 2] *= 2  # the half-plane the real FFT leaves out
    energy = weights @ np.bincount(bins, weights=power.ravel(), minlength=weights.shape[1])
    return float(SCALE_SIGMAS[int(np.argmax(energy))])


def fit_scale_range(scales: np.ndarray) -> tuple[float, float]:
    """The SCALE_QUANTILES of the training images' cell scales."""
    low, high = np.quantile(np.asarray(scales, np.float64), SCALE_QUANTILES)
    return float(low), float(high)


def scale_reasons(rgb: np.ndarray | Image.Image, scale_range: tuple[float, float] | None) -> list[Reason]:
    """[cell_scale reason] when the image's cell scale lies outside `scale_range` (None: no check)."""
    if scale_range is None:
        return []
    scale = cell_scale(rgb)
    low, high = scale_range
    return [why.cell_scale(scale, low, high)] if not low <= scale <= high else []


# ------------------------------------------------------------------------------------------- shift rules


def pixel_measures(pixels: np.ndarray) -> np.ndarray:
    """N x 5: contrast, neighbour correlation, cell structure, sharpness (leukoscope.review.quality's
    statistics) and cell scale of each model-input image, so that flags can be decided later from
    thresholds without keeping the pixels."""
    rows = []
    for rgb in pixels:
        sharpness, contrast = image_stats(rgb)
        rows.append((contrast, neighbour_correlation(rgb), cell_structure(rgb), sharpness, cell_scale(rgb)))
    return np.asarray(rows, np.float64).reshape(-1, 5)


def quality_flags(measures: np.ndarray, quality: QualityThresholds) -> np.ndarray:
    """Whether `quality_reasons` would give each image a reason (unusable or blurry), from `pixel_measures`."""
    m = np.asarray(measures, np.float64).reshape(-1, 5)
    return ((m[:, 0] < quality.contrast) | (m[:, 1] < quality.correlation) | (m[:, 2] < quality.structure)
            | (m[:, 3] < quality.sharpness))


@dataclass
class ReviewImages:
    """Labelled images through a package's network: the val part and shifted copies of it."""

    logits: np.ndarray  # N x C
    feats: np.ndarray  # N x D
    labels: np.ndarray  # N
    measures: np.ndarray  # N x 5, pixel_measures of the model input
    shifted: np.ndarray  # N bool: a shifted copy (False: the val part as is)
    names: list[str] | None = None  # the shift of each image, for the report

    @classmethod
    def concatenate(cls, parts: list[ReviewImages]) -> ReviewImages:
        names = [n for p in parts for n in (p.names or [""] * len(p.labels))]
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("logits", "feats", "labels",
                                                                               "measures", "shifted")), names)


def _round_residual(residual: float) -> float:
    """Down to 2 significant digits (so the threshold 1 - residual rounds up)."""
    if residual <= 0:
        return 0.0
    exponent = math.floor(math.log10(residual))
    return math.floor(round(residual / 10 ** exponent * 10, 6)) / 10 * 10 ** exponent


def choose_benign_threshold(probs: np.ndarray, labels: np.ndarray, other_flag: np.ndarray, shifted: np.ndarray, *,
                            benign: int, confidence_threshold: float, margin: float = BENIGN_MARGIN,
                            max_flag_rise: float = MAX_FLAG_RISE, baseline: float | None = None,
                            ) -> tuple[float, dict[str, Any]]:
    """SHIFT_RULE's (a): the Benign-call threshold that leaves no unflagged leukemia called Benign, with the
    margin, unless it raises the unshifted images' flagged share more than `max_flag_rise` above `baseline`
    (default: their share flagged by `other_flag` or the confidence threshold), then capped.

    >>> p = np.array([[0.999, 0.001], [0.99995, 0.00005], [0.9999, 0.0001]])
    >>> choose_benign_threshold(p, np.array([1, 0, 0]), np.zeros(3, bool), np.array([True, False, False]),
    ...                         benign=0, confidence_threshold=0.99, max_flag_rise=1.0)[0]
    0.9995
    """
    called, p_benign = probs.argmax(1), probs[:, benign]
    base = np.asarray(other_flag, bool) | (probs.max(1) < confidence_threshold)
    plain = ~np.asarray(shifted, bool)
    missed = (labels != benign) & (called == benign) & ~base
    threshold = confidence_threshold
    if missed.any():
        residual = _round_residual(float((1 - p_benign[missed]).min()) / margin)
        threshold = max(confidence_threshold, round(1 - residual, 12))

    def flags(t: float) -> np.ndarray:
        return base | ((called == benign) & (p_benign < t))

    before = _share(base, plain)
    limit = (before if baseline is None else baseline) + max_flag_rise + 1e-12
    wanted, capped = threshold, False
    if plain.any() and flags(threshold)[plain].mean() > limit:
        candidates = sorted({confidence_threshold, *p_benign[plain & (called == benign)].tolist()})
        within = [t for t in candidates if t <= wanted and flags(t)[plain].mean() <= limit]
        threshold = max(within) if within else confidence_threshold
        capped = True
    left = (labels != benign) & (called == benign) & ~flags(threshold)
    return float(threshold), {
        "wanted": float(wanted), "capped": capped, "flag_limit_unshifted": min(1.0, limit),
        "missed_before": int(missed.sum()),
        "missed_after": int(left.sum()), "missed_after_shifted": int(left[~plain].sum()),
        "flagged_unshifted_before": before, "flagged_unshifted_after": _share(flags(threshold), plain),
        "flagged_shifted_before": _share(base, ~plain), "flagged_shifted_after": _share(flags(threshold), ~plain)}


def _share(flags: np.ndarray, where: np.ndarray) -> float:
    return float(flags[where].mean()) if where.any() else 0.0


def fit_shift_rules(images: ReviewImages, train_scales: np.ndarray, classes: list[str] | tuple[str, ...], *,
                    temperature: float, confidence_threshold: float, ood: MahalanobisOOD | None,
                    quality: QualityThresholds, benign_class: str = DEFAULT_BENIGN_CLASS,
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model.json `review` entries, report) by SHIFT_RULE, rule (a) + (c): the cell-scale range from the
    training images, then the Benign threshold on what no other reason (OOD, quality, cell scale) flags."""
    benign = list(classes).index(benign_class)
    probs = softmax(images.logits, temperature)
    other = quality_flags(images.measures, quality)
    if ood is not None:
        other |= ood.score(images.feats) > ood.threshold
    scale_range = fit_scale_range(train_scales)
    scales = images.measures[:, 4]
    scale_flag = (scales < scale_range[0]) | (scales > scale_range[1])
    plain = ~np.asarray(images.shifted, bool)
    package_flags = other | (probs.max(1) < confidence_threshold)  # the rules as they were: the cap's baseline
    threshold, report = choose_benign_threshold(probs, images.labels, other | scale_flag, images.shifted,
                                                benign=benign, confidence_threshold=confidence_threshold,
                                                baseline=_share(package_flags, plain))
    report.update({"images": len(images.labels), "shifted_images": int(images.shifted.sum()),
                   "cell_scale_flagged_unshifted": _share(scale_flag, ~images.shifted),
                   "cell_scale_flagged_shifted": _share(scale_flag, images.shifted)})
    entries = {"benign_class": benign_class, "benign_confidence_threshold": threshold,
               "benign_confidence_threshold_source": "chosen on the val part and shifted copies of it",
               "cell_scale_range": list(scale_range), "cell_scale_source": "training images' 0.5-99.5% quantiles",
               "shift_rule": SHIFT_RULE}
    return entries, report


def fit_review(train_feats: np.ndarray, train_labels: np.ndarray, train_pixels: np.ndarray,
               val_logits: np.ndarray | None, val_feats: np.ndarray | None, val_labels: np.ndarray, *,
               run_temperature: float | None = None, log: Callable[[str], None] | None = None,
               shifted: ReviewImages | None = None, classes: list[str] | tuple[str, ...] | None = None,
               ) -> tuple[dict[str, Any], MahalanobisOOD, dict[str, Any]]:
    """(model.json entries, fitted OOD detector, val-part metrics) from the default engine's outputs.

    With a val part: temperature fitted there (unless the run already has one), confidence threshold chosen
    there, OOD threshold at its DEFAULT_QUANTILE. Without one: temperature 1 and a fixed confidence threshold,
    and the OOD threshold from a fifth of the training images held out of the OOD fit. With `shifted` (the
    val part and shifted copies of it) and `classes` holding the Benign class, also the shift rules
    (`fit_shift_rules`); their report goes into the val metrics under `shift_rules`.
    """
    temperature, t_source = run_temperature, "calibration.json"
    metrics: dict[str, Any] = {}
    if val_logits is not None and val_feats is not None and len(val_logits):
        if temperature is None:
            temperature = float(fit_temperature(np.asarray(val_logits, np.float64), np.asarray(val_labels)))
            t_source = "fitted on the val part"
        probs = softmax(val_logits, temperature)
        threshold, c_source = choose_confidence_threshold(probs, val_labels), "chosen on the val part"
        ood = MahalanobisOOD.fit(train_feats, train_labels)
        val_scores = ood.score(val_feats)
        ood.set_threshold(val_scores)
        ood_part = "val"
        metrics = _val_metrics(probs, val_labels, val_scores, ood.threshold, threshold)
    else:
        if temperature is None:
            temperature, t_source = 1.0, "none (no val part and no calibration.json)"
        threshold, c_source = NO_VAL_CONFIDENCE_THRESHOLD, "default (no val part)"
        held = np.arange(len(train_labels)) % 5 == 0
        ood = MahalanobisOOD.fit(train_feats[~held], train_labels[~held])
        ood.set_threshold(ood.score(train_feats[held]))
        ood_part = "every 5th training image, held out of the fit"
    quality = fit_quality_thresholds(np.array([image_stats(p) for p in train_pixels]))
    if log is not None:
        log(f"temperature {temperature:.3f} ({t_source}); review below confidence {threshold:.2f} ({c_source}); "
            f"OOD threshold {ood.threshold:.1f}")
    review = {"confidence_threshold": threshold, "confidence_threshold_source": c_source,
              "target_confident_accuracy": TARGET_CONFIDENT_ACCURACY, "ood_threshold": ood.threshold,
              **quality.to_dict(), "size_ratio_range": list(SIZE_RATIO_RANGE),
              "min_jpeg_quality": MIN_JPEG_QUALITY}
    if shifted is not None and len(shifted.labels) and metrics and classes and DEFAULT_BENIGN_CLASS in classes:
        entries, report = fit_shift_rules(shifted, np.array([cell_scale(p) for p in train_pixels]), classes,
                                          temperature=temperature, confidence_threshold=threshold, ood=ood,
                                          quality=quality)
        review.update(entries)
        metrics["shift_rules"] = report
        if log is not None:
            log(f"Benign calls reviewed below confidence {entries['benign_confidence_threshold']:.6f}; cell scale "
                f"range {entries['cell_scale_range'][0]:.2f}-{entries['cell_scale_range'][1]:.2f} px; leukemia "
                f"called Benign without a flag on the shifted val set: {report['missed_after']}")
    info = {"temperature": temperature, "temperature_source": t_source, "review": review,
            "ood": {"method": "mahalanobis", "file": OOD_FILE, "feature_dim": int(train_feats.shape[1]),
                    "components": len(ood.variances), "fitted_on": "train", "threshold_part": ood_part,
                    "quantile": DEFAULT_QUANTILE}}
    return info, ood, metrics


def _val_metrics(probs: np.ndarray, labels: np.ndarray, scores: np.ndarray, ood_threshold: float,
                 threshold: float) -> dict[str, Any]:
    """Accuracy and review rates on the val part (thresholds were chosen there: optimistic)."""
    correct = probs.argmax(1) == labels
    flagged = (probs.max(1) < threshold) | (scores > ood_threshold)
    return {"images": len(labels), "accuracy": float(correct.mean()),
            "review_rate": float(flagged.mean()), "ood_flag_rate": float((scores > ood_threshold).mean()),
            "accuracy_not_flagged": float(correct[~flagged].mean()) if (~flagged).any() else None,
            "note": "val part, also used to choose the thresholds; see the evaluation for test-part metrics"}

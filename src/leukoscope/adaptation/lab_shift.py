"""The lab's own look, estimated from its verified images, so that fine-tuning can show the network the
parent's training images as that lab would photograph them ("simulated replay").

Why: a lab verifies a few dozen images before it adapts; fine-tuned on those alone (with unshifted replay),
the network learns the lab's look from a handful of cells. A second lab differs mostly along a few known
axes (leukoscope.data.shifts): objective magnification, stain hue, camera white balance and stain strength.
Those few numbers can be read off the lab's images, and the parent's thousands of labelled training images,
put through them, teach the same look with all of the parent's variety.

How, in order:
1. Optics and hue: the undoing view (leukoscope.review.realign.View: a rescaling and a hue rotation) under
   which the *parent* network gives the lab's adaptation images their verified classes most probably (lowest
   mean negative log-likelihood): a coarse search (scale 2^(k/4), k = -4..4, then hue in 10-degree steps up
   to 30), then a fine one (the scale's and then the hue's neighbours half a step away: 2^(1/8), 5 degrees),
   about 20 passes over the images. The lab's shift is its inverse: magnification 1/scale, hue -hue. The identity
   stays unless a view beats it by `MIN_GAIN` nats per image, so a lab that looks like the parent's gets
   none.
2. Colour: per RGB channel, the affine map that gives the parent's images (through step 1's shift) the
   mean and standard deviation of the lab's images (white balance and stain strength together).
Only the lab's adaptation (train) part is read: its calibration and held-out parts stay unseen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from leukoscope.models.preprocessing import Preprocess
from leukoscope.models.scoring import score_model
from leukoscope.review.realign import View, view_batch

SCALES = tuple(round(2 ** (k / 4), 4) for k in range(-4, 5))  # undoing rescalings, x0.5 to x2 (coarse)
HUES = tuple(float(h) for h in range(-30, 31, 10))  # undoing hue rotations, degrees (coarse)
SCALE_STEP, HUE_STEP = 2 ** (1 / 8), 5.0  # the fine search's half steps
MIN_GAIN = 0.02  # nats per image a view must gain over the images as given to count as the lab's shift
GAIN_LIMITS = (0.5, 2.0)  # a colour map's per-channel slope is clipped to these


@dataclass(frozen=True)
class LabShift:
    """The lab's look relative to the parent's images: `magnification` (> 1: cells look larger), `hue`
    (degrees the lab's stain hue is turned), and per-channel colour maps x -> slope * x + offset (0-255)."""

    magnification: float = 1.0
    hue: float = 0.0
    slope: tuple[float, float, float] = (1.0, 1.0, 1.0)
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    nll_as_given: float = math.nan  # the parent's mean NLL on the lab's images as given ...
    nll_undone: float = math.nan  # ... and through the undoing view (how much step 1 explains)

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """An H x W x 3 uint8 image of the parent's as this lab would show it: the geometry and hue as a
        realignment View would turn it (hue, then magnification), then the colour map."""
        array = np.asarray(pixels, dtype=np.uint8)
        if (self.magnification, self.hue) != (1.0, 0.0):
            array = View(self.magnification, self.hue).apply(array)
        if self.slope == (1.0, 1.0, 1.0) and self.offset == (0.0, 0.0, 0.0):
            return array
        mapped = array.astype(np.float32) * np.asarray(self.slope, np.float32) + np.asarray(self.offset, np.float32)
        return np.clip(np.rint(mapped), 0, 255).astype(np.uint8)

    def apply_batch(self, images: torch.Tensor) -> torch.Tensor:
        """An N x 3 x S x S uint8 tensor through `apply`, on the tensor's device."""
        arrays = images.permute(0, 2, 3, 1).cpu().numpy()
        out = np.stack([self.apply(a) for a in arrays]) if len(arrays) else arrays
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous().to(images.device)

    def to_dict(self) -> dict[str, Any]:
        return {"magnification": self.magnification, "hue_degrees": self.hue, "colour_slope": list(self.slope),
                "colour_offset": list(self.offset), "parent_nll_as_given": self.nll_as_given,
                "parent_nll_undone": self.nll_undone}

    def describe(self) -> str:
        """In words, for logs and the card: "magnification x1.54, hue -15 deg, colour R x1.04+3 ..."."""
        parts = [f"magnification x{self.magnification:.2f}", f"hue {self.hue:+.0f} deg"]
        parts.append("colour " + " ".join(f"{c} x{s:.2f}{o:+.0f}" for c, s, o in zip("RGB", self.slope,
                                                                                       self.offset, strict=True)))
        return ", ".join(parts)


def _undo(images: np.ndarray, scale: float, hue: float) -> np.ndarray:
    """NHWC uint8 images through the undoing view."""
    return images if (scale, hue) == (1.0, 0.0) else view_batch([View(scale, hue)], images)


def _nll(model: nn.Module, images: np.ndarray, labels: np.ndarray, preprocess: Preprocess) -> float:
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    return score_model(model, tensor, preprocess, labels=labels, batch_size=64).mean_nll()


def estimate_view(model: nn.Module, images: np.ndarray, labels: np.ndarray, preprocess: Preprocess,
                  scales: Sequence[float] = SCALES, hues: Sequence[float] = HUES) -> tuple[float, float, float, float]:
    """(scale, hue, NLL as given, NLL through the view) of the undoing view, by step 1 of the module doc."""
    cache: dict[tuple[float, float], float] = {}

    def nll(scale: float, hue: float) -> float:
        if (scale, hue) not in cache:
            cache[(scale, hue)] = _nll(model, _undo(images, scale, hue), labels, preprocess)
        return cache[(scale, hue)]

    scale = min(scales, key=lambda s: (nll(s, 0.0), abs(math.log(s))))
    hue = min(hues, key=lambda h: (nll(scale, h), abs(h)))
    scale = min((round(scale / SCALE_STEP, 4), scale, round(scale * SCALE_STEP, 4)),
                key=lambda s: (nll(s, hue), abs(math.log(s))))
    hue = min((hue - HUE_STEP, hue, hue + HUE_STEP), key=lambda h: (nll(scale, h), abs(h)))
    given = nll(1.0, 0.0)
    if given - nll(scale, hue) < MIN_GAIN:
        return 1.0, 0.0, given, given
    return scale, hue, given, nll(scale, hue)


def colour_map(lab: np.ndarray, simulated: np.ndarray) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel (slopes, offsets) that give `simulated` (NHWC uint8) the mean and std of `lab`."""
    lab_f = lab.reshape(-1, 3).astype(np.float64)
    sim_f = simulated.reshape(-1, 3).astype(np.float64)
    slope = np.clip(lab_f.std(0) / np.maximum(sim_f.std(0), 1e-6), *GAIN_LIMITS)
    offset = lab_f.mean(0) - slope * sim_f.mean(0)
    s_r, s_g, s_b = (float(round(v, 4)) for v in slope)
    o_r, o_g, o_b = (float(round(v, 3)) for v in offset)
    return (s_r, s_g, s_b), (o_r, o_g, o_b)


def estimate(model: nn.Module, lab_images: torch.Tensor, lab_labels: torch.Tensor, parent_images: torch.Tensor,
             preprocess: Preprocess, *, colour_sample: int = 256, seed: int = 0) -> LabShift:
    """The lab's LabShift from its adaptation images (N x 3 x S x S uint8 with their verified labels) and the
    parent's training images (a seeded sample of `colour_sample` of them sets the colour map)."""
    lab = lab_images.permute(0, 2, 3, 1).cpu().numpy()
    scale, hue, given, undone = estimate_view(model, lab, lab_labels.cpu().numpy(), preprocess)
    geometry = LabShift(magnification=round(1.0 / scale, 4), hue=-hue, nll_as_given=given, nll_undone=undone)
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(parent_images), generator=generator)[:colour_sample]
    simulated = geometry.apply_batch(parent_images[chosen].cpu()).permute(0, 2, 3, 1).numpy()
    slope, offset = colour_map(lab, simulated)
    return replace(geometry, slope=slope, offset=offset)

"""Training augmentation of uint8 image batches, on the device the batch is on.

The whole training set is decoded once into uint8 tensors (`leukoscope.models.inputs`); every epoch then
augments batches of them with per-image random parameters drawn from a seeded CPU generator, so a run is
reproducible on any device and a resumed run replays the same augmentation. Two recipes:

- "paper": random brightness, zoom and horizontal flip (the published method's augmentation).
- "strong": both flips, 90-degree rotations plus small angles, zoom 0.75-1.25, brightness / contrast /
  saturation and a colour (stain) tint. Smears have no canonical orientation and stains vary between
  slides and labs, so these are label-preserving and make the model rely on cell morphology.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

RECIPES = ("none", "paper", "strong")  # the values of TrainConfig.augment


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device="cpu").to(device) * (high - low) + low


def _coin(n: int, p: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return (torch.rand(n, generator=generator, device="cpu") < p).to(device)


def augment(batch: torch.Tensor, recipe: str, generator: torch.Generator) -> torch.Tensor:
    """Augment a uint8 N x 3 x H x W batch; returns float in [0, 1] on the batch's device.

    Random parameters come from `generator` (a CPU generator), so a seeded run is reproducible on any
    device and a resumed run replays the same augmentation.
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown augmentation {recipe!r}; choose from {RECIPES}")
    x = batch.float() / 255.0
    if recipe == "none" or x.shape[0] == 0:
        return x
    n, device = x.shape[0], x.device
    if recipe == "paper":
        angle = torch.zeros(n, device=device)
        scale = _uniform(n, 0.8, 1.2, generator, device)
        hflip = _coin(n, 0.5, generator, device)
        vflip = torch.zeros(n, dtype=torch.bool, device=device)
    else:
        quarter = torch.randint(0, 4, (n,), generator=generator).to(device).float() * (math.pi / 2)
        angle = quarter + _uniform(n, -15, 15, generator, device) * (math.pi / 180)
        scale = _uniform(n, 0.75, 1.25, generator, device)
        hflip = _coin(n, 0.5, generator, device)
        vflip = _coin(n, 0.5, generator, device)
    x = _affine(x, angle, scale, hflip, vflip)
    if recipe == "paper":
        return (x * _uniform(n, 0.8, 1.2, generator, device).view(n, 1, 1, 1)).clamp(0, 1)
    return _colour(x, generator)


def _affine(x: torch.Tensor, angle: torch.Tensor, scale: torch.Tensor, hflip: torch.Tensor, vflip: torch.Tensor) -> torch.Tensor:
    """Per-image rotation, zoom (scale > 1 zooms in) and flips, reflecting at the borders."""
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    sx = torch.where(hflip, -1.0, 1.0)
    sy = torch.where(vflip, -1.0, 1.0)
    theta = torch.zeros(x.shape[0], 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 0, 1] = cos * sx, -sin * sy
    theta[:, 1, 0], theta[:, 1, 1] = sin * sx, cos * sy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _colour(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation and a per-channel tint: slide-to-slide stain variation."""
    n, device = x.shape[0], x.device
    brightness = _uniform(n, 0.75, 1.25, generator, device).view(n, 1, 1, 1)
    contrast = _uniform(n, 0.75, 1.25, generator, device).view(n, 1, 1, 1)
    saturation = _uniform(n, 0.6, 1.4, generator, device).view(n, 1, 1, 1)
    tint = (torch.rand(n, 3, generator=generator).to(device) * 0.2 + 0.9).view(n, 3, 1, 1)
    x = x * brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (x - gray) * saturation + gray
    return (x * tint).clamp(0, 1)

"""Training augmentation of uint8 image batches, on the device the batch is on.

The whole training set is decoded once into uint8 tensors (`leukoscope.models.inputs`); every epoch then
augments batches of them with per-image random parameters drawn from a seeded CPU generator, so a run is
reproducible on any device and a resumed run replays the same augmentation. Three recipes:

- "paper": random brightness, zoom and horizontal flip (the published method's augmentation).
- "strong": both flips, 90-degree rotations plus small angles, zoom 0.75-1.25, brightness / contrast /
  saturation and a colour (stain) tint. Smears have no canonical orientation and stains vary between
  slides and labs, so these are label-preserving and make the model rely on cell morphology.
- "robust": "strong"'s geometry with zoom 0.5-2x (zooming out pads with each image's background colour, so
  the cells are kept), then the second-lab family of leukoscope.data.shifts on tensors: stain amounts in
  the deconvolved H&E space, hue rotation, brightness / contrast / saturation, camera white balance,
  Gaussian blur and a JPEG-like 8x8 DCT quantisation. Meant to train a base model that holds up in other
  labs (issue #13); the bundled package was not trained with it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from leukoscope.data.shifts import LOG_ADJUST, RGB_FROM_HED

RECIPES = ("none", "paper", "strong", "robust")  # the values of TrainConfig.augment


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
    if recipe == "robust":
        return robust(x, generator)
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
    grid = _affine_grid(x, angle, scale, hflip, vflip)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _affine_grid(x: torch.Tensor, angle: torch.Tensor, scale: torch.Tensor, hflip: torch.Tensor,
                 vflip: torch.Tensor) -> torch.Tensor:
    """The sampling grid of a per-image rotation, zoom and flips (shared by `_affine` and `zoom_padded`)."""
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    sx = torch.where(hflip, -1.0, 1.0)
    sy = torch.where(vflip, -1.0, 1.0)
    theta = torch.zeros(x.shape[0], 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 0, 1] = cos * sx, -sin * sy
    theta[:, 1, 0], theta[:, 1, 1] = sin * sx, cos * sy
    return F.affine_grid(theta, list(x.shape), align_corners=False)


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


# ------------------------------------------------------------------------------------------- robust

STAIN_RANGE = (0.7, 1.3)
HUE_DEGREES = 20.0
ZOOM_RANGE = (0.5, 2.0)
GAIN_RANGE = (0.85, 1.15)
BLUR_SIGMA = (0.3, 1.5)  # applied to half the images
JPEG_QUALITY = (50, 95)  # applied to half the images
# the JPEG standard's luminance and chrominance quantisation tables (quality 50)
_JPEG_LUMA = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
              14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
              49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)
_JPEG_CHROMA = (17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
                47, 66, 99, 99, 99, 99, 99, 99, *([99] * 32))


def robust(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The "robust" recipe on a float N x 3 x H x W batch in [0, 1] (see the module docstring)."""
    n, device = x.shape[0], x.device
    quarter = torch.randint(0, 4, (n,), generator=generator).to(device).float() * (math.pi / 2)
    angle = quarter + _uniform(n, -15, 15, generator, device) * (math.pi / 180)
    scale = torch.exp(_uniform(n, math.log(ZOOM_RANGE[0]), math.log(ZOOM_RANGE[1]), generator, device))
    hflip = _coin(n, 0.5, generator, device)
    vflip = _coin(n, 0.5, generator, device)
    x = zoom_padded(x, angle, scale, hflip, vflip)
    x = stain_jitter(x, _uniform(n, *STAIN_RANGE, generator, device), _uniform(n, *STAIN_RANGE, generator, device))
    x = rotate_hue(x, _uniform(n, -HUE_DEGREES, HUE_DEGREES, generator, device))
    x = _colour(x, generator)
    gains = torch.stack([_uniform(n, *GAIN_RANGE, generator, device), torch.ones(n, device=device),
                         _uniform(n, *GAIN_RANGE, generator, device)], dim=1)
    x = (x * gains.view(n, 3, 1, 1)).clamp(0, 1)
    sigma = torch.where(_coin(n, 0.5, generator, device), _uniform(n, *BLUR_SIGMA, generator, device), 0.0)
    x = gaussian_blur(x, sigma)
    quality = torch.randint(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1, (n,), generator=generator).to(device)
    quality = torch.where(_coin(n, 0.5, generator, device), quality, 0)
    return jpeg_like(x, quality).clamp(0, 1)


def zoom_padded(x: torch.Tensor, angle: torch.Tensor, scale: torch.Tensor, hflip: torch.Tensor,
                vflip: torch.Tensor) -> torch.Tensor:
    """`_affine`, but what comes from outside the image (zooming out, corners of a rotation) is each image's
    background colour, its per-channel median (most pixels of a field are plasma), so every cell is kept
    and none is mirrored in."""
    background = x.flatten(2).median(dim=2).values.view(x.shape[0], 3, 1, 1)
    grid = _affine_grid(x, angle, scale, hflip, vflip)
    return F.grid_sample(x - background, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + background


def stain_jitter(x: torch.Tensor, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Per-image haematoxylin and eosin amounts, as leukoscope.data.shifts.stain_jitter scales them."""
    rgb_from_hed = torch.tensor(RGB_FROM_HED, dtype=torch.float64)
    hed_from_rgb = torch.linalg.inv(rgb_from_hed).to(x)
    od = torch.log(x.clamp_min(1e-6)) / LOG_ADJUST  # N x 3 x H x W
    hed = torch.einsum("nchw,cd->ndhw", od, hed_from_rgb)
    factors = torch.stack([h, e, torch.ones_like(h)], dim=1).view(-1, 3, 1, 1)
    log_rgb = torch.einsum("ndhw,dc->nchw", hed * factors * -LOG_ADJUST, rgb_from_hed.to(x))
    return torch.exp(-log_rgb).clamp(0, 1)


def rotate_hue(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Per-image rotation of the colours about the grey axis (Rodrigues' formula), clipped to [0, 1]."""
    theta = degrees * (math.pi / 180)
    cos, sin = torch.cos(theta).view(-1, 1, 1), torch.sin(theta).view(-1, 1, 1)
    k = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]], device=x.device) / math.sqrt(3)
    outer = torch.full((3, 3), 1 / 3, device=x.device)
    eye = torch.eye(3, device=x.device)
    rotation = cos * eye + sin * k + (1 - cos) * outer  # N x 3 x 3
    return torch.einsum("nij,njhw->nihw", rotation, x).clamp(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image separable Gaussian blur (sigma in pixels; 0 leaves an image as it is), reflecting borders."""
    n, c, h, w = x.shape
    radius = max(1, math.ceil(3 * float(sigma.max()))) if n else 1
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    safe = sigma.clamp_min(1e-3).view(n, 1)
    kernel = torch.exp(-0.5 * (offsets.view(1, -1) / safe) ** 2)
    kernel = torch.where((sigma > 0).view(n, 1), kernel, (offsets == 0).to(x.dtype).view(1, -1))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (n*c) x k
    flat = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(n * c, 1, 1, -1), groups=n * c)
    flat = F.conv2d(flat, kernel.view(n * c, 1, -1, 1), groups=n * c)
    return flat.view(n, c, h, w)


def _dct_matrix(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    k = torch.arange(8, dtype=torch.float64)
    m = torch.cos((2 * k.view(1, -1) + 1) * k.view(-1, 1) * math.pi / 16) * math.sqrt(2 / 8)
    m[0] /= math.sqrt(2)
    return m.to(device=device, dtype=dtype)


def _jpeg_tables(quality: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """N x 3 x 8 x 8 quantisation steps (Y, Cb, Cr) at each image's quality, by the IJG scaling rule."""
    q = quality.clamp(1, 100).to(torch.float64)
    factor = torch.where(q < 50, 5000 / q, 200 - 2 * q).view(-1, 1, 1)
    base = torch.tensor([_JPEG_LUMA, _JPEG_CHROMA, _JPEG_CHROMA], dtype=torch.float64,
                        device=quality.device).view(1, 3, 8, 8)
    return ((base * factor.unsqueeze(1) + 50) // 100).clamp(1, 255).to(dtype)


def jpeg_like(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """JPEG's lossy step without the file: YCbCr, 8x8 DCT, rounding to the quality's quantisation steps and
    back (no chroma subsampling). Images with quality 0 pass unchanged; sides not a multiple of 8 keep
    their last partial block as it is."""
    n, _, h, w = x.shape
    keep = quality > 0
    if n == 0 or not bool(keep.any()) or h < 8 or w < 8:
        return x
    to_ycc = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
                          device=x.device, dtype=x.dtype)
    ycc = torch.einsum("ij,njhw->nihw", to_ycc, x * 255) - torch.tensor([128.0, 0, 0], device=x.device,
                                                                          dtype=x.dtype).view(1, 3, 1, 1)
    hb, wb = h // 8 * 8, w // 8 * 8
    blocks = ycc[:, :, :hb, :wb].reshape(n, 3, hb // 8, 8, wb // 8, 8).permute(0, 1, 2, 4, 3, 5)
    d = _dct_matrix(x.device, x.dtype)
    coeffs = d @ blocks @ d.T
    steps = _jpeg_tables(quality, x.dtype).view(n, 3, 1, 1, 8, 8)
    restored = d.T @ (torch.round(coeffs / steps) * steps) @ d
    out_ycc = ycc.clone()
    out_ycc[:, :, :hb, :wb] = restored.permute(0, 1, 2, 4, 3, 5).reshape(n, 3, hb, wb)
    out_ycc = out_ycc + torch.tensor([128.0, 0, 0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    to_rgb = torch.linalg.inv(to_ycc.double()).to(x.dtype)
    out = torch.einsum("ij,njhw->nihw", to_rgb, out_ycc) / 255
    return torch.where(keep.view(n, 1, 1, 1), out, x)

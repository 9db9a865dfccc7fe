"""leukoscope.training.augment: the augmentation recipes (shapes, value range, seeded determinism, geometry
that only moves pixels)."""

from __future__ import annotations

import math

import pytest
import torch

from leukoscope.training.augment import (
    RECIPES,
    _affine,
    augment,
    gaussian_blur,
    jpeg_like,
    rotate_hue,
    stain_jitter,
    zoom_padded,
)


def batch(n: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_keeps_shape_and_gives_floats_in_unit_range(recipe):
    x = batch(6, 20)
    out = augment(x, recipe, gen())
    assert out.shape == x.shape and out.dtype == torch.float32 and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1
    assert augment(x[:0], recipe, gen()).shape == (0, 3, 20, 20)


def test_none_is_the_identity():
    x = batch()
    assert torch.equal(augment(x, "none", gen()), x.float() / 255)


@pytest.mark.parametrize("recipe", ["paper", "strong", "robust"])
def test_augmentation_is_reproducible_from_a_seeded_generator(recipe):
    x = batch(8, 16)
    a, b = augment(x, recipe, gen(5)), augment(x, recipe, gen(5))
    assert torch.equal(a, b)
    assert not torch.equal(a, augment(x, recipe, gen(6)))
    assert not torch.equal(a, x.float() / 255)
    g = gen(5)  # drawing from one generator twice gives new parameters
    assert not torch.equal(augment(x, recipe, g), augment(x, recipe, g))


def test_unknown_recipe_is_refused():
    with pytest.raises(ValueError, match="unknown augmentation 'wild'"):
        augment(batch(), "wild", gen())


def _geometry(x: torch.Tensor, angle: float = 0.0, hflip: bool = False, vflip: bool = False) -> torch.Tensor:
    n = x.shape[0]
    return _affine(x, torch.full((n,), angle), torch.ones(n), torch.full((n,), hflip), torch.full((n,), vflip))


def test_flips_and_quarter_turns_only_move_pixels():
    x = batch(3, 12).float() / 255
    assert torch.allclose(_geometry(x, hflip=True), x.flip(3), atol=1e-5)
    assert torch.allclose(_geometry(x, vflip=True), x.flip(2), atol=1e-5)
    quarter = _geometry(x, angle=math.pi / 2)
    assert any(torch.allclose(quarter, torch.rot90(x, k, dims=(2, 3)), atol=1e-5) for k in (1, 3))
    for out in (_geometry(x, hflip=True, vflip=True), quarter, _geometry(x, angle=math.pi)):
        # the same multiset of pixel values, in other places
        assert torch.allclose(out.flatten(1).sort(1).values, x.flatten(1).sort(1).values, atol=1e-5)
    assert torch.allclose(_geometry(x), x, atol=1e-5)


def test_paper_recipe_never_flips_vertically_or_rotates():
    """Paper: zoom, horizontal flip and brightness only; a vertically symmetric image stays symmetric."""
    half = batch(8, 16)[:, :, :8]
    x = torch.cat([half, half.flip(2)], dim=2)  # top-bottom mirror image
    out = augment(x, "paper", gen(3))
    assert torch.allclose(out, out.flip(2), atol=1e-4)


# ------------------------------------------------------------------------------------------- robust


def _smear(size: int = 32) -> torch.Tensor:
    """1 x 3 x S x S float: a pale background with one dark purple disc in the middle."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    inside = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 5) ** 2
    x = torch.tensor([0.92, 0.88, 0.94]).view(3, 1, 1).repeat(1, size, size)
    x[:, inside] = torch.tensor([0.47, 0.24, 0.67]).view(3, 1)
    return x[None]


def test_robust_components_leave_an_image_alone_at_their_identity():
    x = _smear()
    assert torch.allclose(stain_jitter(x, torch.ones(1), torch.ones(1)), x, atol=1e-5)
    assert torch.equal(rotate_hue(x, torch.zeros(1)), x)
    assert torch.equal(gaussian_blur(x, torch.zeros(1)), x)
    assert torch.equal(jpeg_like(x, torch.zeros(1, dtype=torch.long)), x)


def test_robust_stain_jitter_matches_the_shift_family():
    import numpy as np
    from PIL import Image

    from leukoscope.data.shifts import stain_jitter as pil_stain_jitter

    x = _smear()
    image = Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    expected = torch.from_numpy(np.asarray(pil_stain_jitter(image, 1.3, 0.7), np.float32) / 255).permute(2, 0, 1)
    ours = stain_jitter(torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)[None],
                        torch.tensor([1.3]), torch.tensor([0.7]))[0]
    assert (ours - expected).abs().max() <= 1 / 255 + 1e-6


def test_hue_rotation_keeps_greys_and_turns_colours():
    grey = torch.full((1, 3, 4, 4), 0.5)
    assert torch.allclose(rotate_hue(grey, torch.tensor([90.0])), grey, atol=1e-6)
    x = _smear()
    turned = rotate_hue(x, torch.tensor([20.0]))
    assert not torch.allclose(turned, x, atol=1e-3)
    assert torch.allclose(rotate_hue(turned, torch.tensor([-20.0])), x, atol=1e-4)  # nothing clipped here


def test_blur_keeps_the_mean_and_smooths():
    x = _smear()
    blurred = gaussian_blur(x.repeat(2, 1, 1, 1), torch.tensor([0.0, 1.5]))
    assert torch.equal(blurred[0], x[0])
    assert abs(float(blurred[1].mean() - x.mean())) < 2e-3
    assert float(blurred[1].diff(dim=2).abs().sum()) < float(x.diff(dim=2).abs().sum())


def test_jpeg_like_is_close_to_a_real_jpeg_and_worse_at_lower_quality():
    import io

    import numpy as np
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    x = (_smear(32) + torch.rand(1, 3, 32, 32, generator=rng) * 0.1).clamp(0, 1)
    pixels = (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    x = torch.from_numpy(pixels.astype(np.float32) / 255).permute(2, 0, 1)[None]
    errors = {}
    for quality in (50, 95):
        ours = jpeg_like(x, torch.tensor([quality]))
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=quality, subsampling=0)
        real = torch.from_numpy(np.asarray(Image.open(buffer), np.float32) / 255).permute(2, 0, 1)[None]
        assert (ours - real).abs().mean() < 0.02
        errors[quality] = float((ours - x).abs().mean())
    assert errors[50] > errors[95] > 0


def test_robust_zoom_out_keeps_the_cell_and_pads_with_the_background_colour():
    x = _smear(32)
    one, zero, no = torch.ones(1), torch.zeros(1), torch.zeros(1, dtype=torch.bool)
    out = zoom_padded(x, zero, 0.5 * one, no, no)
    background = x.flatten(2).median(dim=2).values.view(3)
    assert torch.allclose(out[0, :, 0, 0], background, atol=1e-6)
    assert torch.allclose(out[0, :, :7, :], background.view(3, 1, 1).expand(3, 7, 32), atol=1e-6)
    assert torch.allclose(out[0, :, 16, 16], x[0, :, 16, 16], atol=1e-3)  # the cell, now half the size
    dark = (out[0].sum(0) < 1.8).sum().item()
    assert 0.15 < dark / (x[0].sum(0) < 1.8).sum().item() < 0.35  # a quarter of the area
    assert torch.allclose(zoom_padded(x, zero, one, no, no), x, atol=1e-5)
    batch = (_smear(32) * 255).round().to(torch.uint8).repeat(8, 1, 1, 1)
    assert augment(batch, "robust", gen(1)).shape == (8, 3, 32, 32)

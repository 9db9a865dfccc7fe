"""leukoscope.training.augment: the augmentation recipes (shapes, value range, seeded determinism, geometry
that only moves pixels)."""

from __future__ import annotations

import math

import pytest
import torch

from leukoscope.training.augment import RECIPES, _affine, augment


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


@pytest.mark.parametrize("recipe", ["paper", "strong"])
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

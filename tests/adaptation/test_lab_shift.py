"""`leukoscope.adaptation.lab_shift`: the lab's look read off its verified images, and the parent's images shown
through it. The search is tested with a likelihood whose best view is known; the colour map with a known
affine map; the simulated images against the shift family's own components."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from leukoscope.adaptation import lab_shift
from leukoscope.adaptation.finetune import epoch_set
from leukoscope.adaptation.lab_shift import LabShift, colour_map, estimate_view
from leukoscope.data.shifts import magnify, rotate_hue
from leukoscope.training.dataset import TensorSet


def field(seed: int = 0, size: int = 32, low: int = 0, high: int = 256) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(low, high, (size, size, 3), dtype=np.uint8)


def test_the_identity_changes_nothing() -> None:
    pixels = field()
    assert np.array_equal(LabShift().apply(pixels), pixels)


def test_a_shift_is_the_family_components_then_the_colour_map() -> None:
    pixels = field(1)
    shift = LabShift(magnification=1.5, hue=-15.0, slope=(1.1, 1.0, 0.9), offset=(5.0, 0.0, -3.0))
    expected = np.asarray(magnify(rotate_hue(Image.fromarray(pixels), -15.0), 1.5), np.float32)
    expected = expected * np.float32([1.1, 1.0, 0.9]) + np.float32([5.0, 0.0, -3.0])
    expected = np.clip(np.rint(expected), 0, 255).astype(np.uint8)
    assert np.array_equal(shift.apply(pixels), expected)
    batch = torch.from_numpy(np.stack([pixels, field(2)])).permute(0, 3, 1, 2).contiguous()
    out = shift.apply_batch(batch)
    assert out.shape == batch.shape and out.dtype == torch.uint8
    assert np.array_equal(out[0].permute(1, 2, 0).numpy(), expected)


def test_the_colour_map_recovers_a_known_affine_map() -> None:
    simulated = np.stack([field(s, low=40, high=180) for s in range(4)])  # nothing clipped by the map
    lab = np.clip(np.rint(simulated.astype(np.float64) * [1.2, 1.0, 0.8] + [-10.0, 0.0, 20.0]), 0, 255)
    slope, offset = colour_map(lab.astype(np.uint8), simulated)
    assert slope == pytest.approx((1.2, 1.0, 0.8), abs=0.03)
    assert offset == pytest.approx((-10.0, 0.0, 20.0), abs=3.0)


def test_the_colour_map_slope_is_clipped() -> None:
    flat = np.full((1, 4, 4, 3), 128, np.uint8)
    slope, _ = colour_map(np.stack([field(0, 4)]), flat)  # the simulated images have no spread at all
    assert slope == (2.0, 2.0, 2.0)


def fake_likelihood(monkeypatch: pytest.MonkeyPatch, best_scale: float, best_hue: float, flat: bool = False) -> list:
    """_undo returns the view itself and _nll scores its distance from the best view (or nothing, `flat`)."""
    seen: list = []
    monkeypatch.setattr(lab_shift, "_undo", lambda images, scale, hue: (scale, hue))

    def nll(model, view, labels, preprocess) -> float:
        seen.append(view)
        if flat:
            return 1.0
        scale, hue = view
        return 0.1 + (math.log2(scale) - math.log2(best_scale)) ** 2 + ((hue - best_hue) / 30) ** 2

    monkeypatch.setattr(lab_shift, "_nll", nll)
    return seen


def test_the_search_finds_the_view_that_undoes_the_lab(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = fake_likelihood(monkeypatch, best_scale=1 / 1.5, best_hue=15.0)
    scale, hue, given, undone = estimate_view(None, np.zeros(1), np.zeros(1), None)
    assert (scale, hue) == (round(2 ** -0.625, 4), 15.0)  # the fine grid's nearest to x0.667
    assert given > undone
    assert len(seen) == len(set(seen)) <= 22  # each view scored once, about 20 passes


def test_a_lab_that_looks_like_the_parent_gets_no_shift(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_likelihood(monkeypatch, 1.0, 0.0, flat=True)
    assert estimate_view(None, np.zeros(1), np.zeros(1), None) == (1.0, 0.0, 1.0, 1.0)


def test_each_epoch_mixes_lab_replay_and_simulated_images() -> None:
    def tensors(n: int, label: int) -> TensorSet:
        return TensorSet(torch.full((n, 3, 2, 2), label, dtype=torch.uint8), torch.full((n,), label))

    lab, replay, simulated = tensors(3, 0), tensors(20, 1), tensors(20, 2)
    data = epoch_set(lab, replay, 6, seed=0, epoch=0, simulated=simulated, simulated_count=9)
    assert torch.bincount(data.labels).tolist() == [3, 6, 9]
    assert torch.equal(data.images[:, 0, 0, 0], data.labels.to(torch.uint8))
    same = epoch_set(lab, replay, 6, seed=0, epoch=0)  # simulated off: the replay sample as before
    assert torch.equal(same.labels, data.labels[:9])

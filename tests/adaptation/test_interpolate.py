"""leukoscope.adaptation.interpolate: the weight-space ensemble with the parent and the rule choosing its share."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from leukoscope.adaptation.data import load_parent
from leukoscope.adaptation.interpolate import INTERPOLATION_WEIGHTS, choose_interpolation, interpolated, mean_nll
from leukoscope.training.dataset import TensorSet
from tests.helpers.modelfixtures import shared_tiny_package


def _pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    parent = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    tuned = copy.deepcopy(parent)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(1.0)
    tuned[1].running_mean.add_(2.0)
    tuned[1].num_batches_tracked.add_(7)
    return parent, tuned


def test_the_ensemble_mixes_floating_weights_and_buffers_and_keeps_the_tuned_counters() -> None:
    parent, tuned = _pair()
    half = interpolated(parent, tuned, 0.5)
    for name, value in half.state_dict().items():
        p, t = parent.state_dict()[name], tuned.state_dict()[name]
        expected = (p + t) / 2 if value.is_floating_point() else t
        assert torch.allclose(value, expected.to(value)), name
    assert torch.equal(interpolated(parent, tuned, 0.0)[0].weight, parent[0].weight)
    assert torch.equal(interpolated(parent, tuned, 1.0)[0].weight, tuned[0].weight)
    assert half is not tuned and torch.equal(tuned[1].running_mean, parent[1].running_mean + 2.0)  # inputs untouched


@pytest.fixture(scope="module")
def tiny_parent(tmp_path_factory: pytest.TempPathFactory):
    return load_parent(shared_tiny_package(tmp_path_factory))


def _own_calls(model: nn.Module, preprocess, n: int = 12) -> TensorSet:
    """Random images labelled with `model`'s own calls: the parent fits them best."""
    from leukoscope.models.scoring import score_model

    size = preprocess.input_size
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return TensorSet(images, score_model(model, images, preprocess, batch_size=64).logits.argmax(1))


def test_the_rule_picks_the_share_with_the_lowest_mean_val_nll(tiny_parent) -> None:
    parent, pre = tiny_parent.model.eval(), tiny_parent.preprocess
    tuned = copy.deepcopy(parent)
    with torch.no_grad():
        for p in tuned.parameters():
            if p.is_floating_point():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.5)
    parts = {"lab_val": _own_calls(parent, pre), "replay_val": _own_calls(parent, pre, 6), "empty": None}
    weight, model, record = choose_interpolation(parent, tuned.eval(), parts, pre)
    rows = {row["weight"]: row for row in record["table"]}
    assert set(rows) == set(INTERPOLATION_WEIGHTS) and record["parts"] == {"lab_val": 12, "replay_val": 6}
    assert weight == record["chosen"] == min(rows, key=lambda w: rows[w]["mean_nll"])
    assert rows[1.0]["mean_nll"] == pytest.approx((mean_nll(tuned, parts["lab_val"], pre)
                                                   + mean_nll(tuned, parts["replay_val"], pre)) / 2)
    assert weight < 1.0  # the noise hurt what the parent fitted: some of the parent is kept
    expected = interpolated(parent, tuned, weight).state_dict()  # the network it returns is that mix
    assert all(torch.equal(value, expected[name]) for name, value in model.state_dict().items())
    same, _, record = choose_interpolation(parent, copy.deepcopy(parent), parts, pre)
    assert same == 1.0  # a tie: the larger share (nothing to gain from the parent)
    assert choose_interpolation(parent, tuned, {"lab_val": None}, pre)[2]["reason"].startswith("no val images")


def test_adapt_leaves_the_fine_tuned_network_alone_when_interpolation_is_off(tiny_parent) -> None:
    from leukoscope.adaptation.adapt import _interpolated
    from leukoscope.adaptation.finetune import AdaptOptions

    lines: list[str] = []
    assert _interpolated(tiny_parent, tiny_parent.model, None, None, AdaptOptions(interpolate=False), "cpu",
                         lines.append) is None
    assert lines == []  # on, it is tested end to end in tests/adaptation/test_adapt.py

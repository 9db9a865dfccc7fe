"""leukoscope.adaptation.finetune: AdaptOptions.check (options that cannot work are one ConfigError before any
image is read; NaN and infinite values used to pass "not below 0" and train) and the distilled targets."""

from __future__ import annotations

import pytest
import torch

from leukoscope.adaptation.finetune import AdaptOptions, distilled, epoch_set
from leukoscope.errors import ConfigError
from leukoscope.training.dataset import TensorSet


@pytest.mark.parametrize(("changes", "message"), [
    ({"replay_ratio": float("nan")}, "--replay-ratio must be a finite number, 0 or more, got nan"),
    ({"replay_ratio": float("inf")}, "--replay-ratio must be a finite number, 0 or more, got inf"),
    ({"lr": float("inf")}, "--lr must be above 0 and finite"),
    ({"lr": float("nan")}, "--lr must be above 0 and finite"),
    ({"simulate_ratio": float("nan")}, "--simulate-ratio must be a finite number, 0 or more, got nan"),
    ({"simulate_ratio": -1.0}, "--simulate-ratio must be a finite number, 0 or more, got -1"),
    ({"seed": -1}, "--seed must be 0 or more, got -1"),
    ({"distill": 1.5}, "--distill must be in [0, 1], got 1.5"),
    ({"distill": float("nan")}, "--distill must be in [0, 1], got nan"),  # numpy refused it after the parent was loaded
])
def test_bad_options_are_one_config_error(changes, message) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        AdaptOptions(**changes).check()


def test_the_defaults_pass() -> None:
    AdaptOptions().check()


def _images(n: int, value: int) -> torch.Tensor:
    return torch.full((n, 3, 4, 4), value, dtype=torch.uint8)


def test_distilled_targets_mix_the_label_and_the_parents_probabilities() -> None:
    data = TensorSet(_images(2, 1), torch.tensor([0, 2]))
    teacher = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.2, 0.8]])
    out = distilled(data, teacher, 0.25, 3)
    assert torch.allclose(out.targets, torch.tensor([[0.875, 0.125, 0.0], [0.0, 0.05, 0.95]]))
    assert out.images is data.images and torch.equal(out.labels, data.labels)
    assert torch.allclose(distilled(data, teacher, 0.0, 3).targets, torch.eye(3)[[0, 2]])


def test_an_epoch_with_distilled_parts_has_a_target_for_every_image_and_follows_its_sample() -> None:
    lab = TensorSet(_images(3, 0), torch.tensor([1, 1, 1]))
    replay_images = torch.arange(8, dtype=torch.uint8).view(8, 1, 1, 1).expand(8, 3, 4, 4).contiguous()
    teacher = torch.softmax(torch.randn(8, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    replay = distilled(TensorSet(replay_images, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])), teacher, 0.5, 3)
    simulated = TensorSet(255 - replay.images, replay.labels, replay.targets)  # same order as the replay
    data = epoch_set(lab, replay, 4, seed=0, epoch=0, simulated=simulated, simulated_count=2, num_classes=3)
    assert data.targets is not None and data.targets.shape == (3 + 4 + 2, 3)
    assert torch.equal(data.targets[:3], torch.eye(3)[[1, 1, 1]])  # the lab's images: their labels
    for image, target in zip(data.images[3:], data.targets[3:], strict=True):
        original = int(image[0, 0, 0]) if int(image[0, 0, 0]) < 8 else 255 - int(image[0, 0, 0])
        assert torch.allclose(target, replay.targets[original])  # each image kept its own target
    assert epoch_set(lab, TensorSet(replay_images, replay.labels), 4, 0, 0).targets is None  # off: labels only

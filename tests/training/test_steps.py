"""One training epoch: what each DDP rank draws for itself."""

from __future__ import annotations

import torch
from torch import nn

from leukoscope.models.preprocessing import Preprocess
from leukoscope.training import steps
from leukoscope.training.config import TrainConfig
from leukoscope.training.dataset import TensorSet
from leukoscope.training.distributed import DistContext


class _NoSync(DistContext):
    """A rank of a 2-process group whose collectives are local (no process group in a unit test)."""

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor


def _augmentation_draws(rank: int, monkeypatch) -> list[float]:
    draws: list[float] = []

    def recording_augment(batch, recipe, generator):
        draws.append(float(torch.rand(1, generator=generator)))
        return batch

    monkeypatch.setattr(steps, "augment", recording_augment)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    data = TensorSet(torch.randint(0, 255, (16, 3, 8, 8), dtype=torch.uint8), torch.arange(16) % 4)
    config = TrainConfig(data="unused", batch_size=4, augment="strong", seed=3)
    steps.train_one_epoch(net, data, config, Preprocess(8, (0.5,) * 3, (0.25,) * 3), 0, optimizer, scheduler,
                          nn.CrossEntropyLoss(), _NoSync(rank=rank, world_size=2), lambda n: None)
    return draws


def test_each_rank_draws_its_own_augmentation_and_rank_0_draws_what_a_single_process_draws(monkeypatch):
    rank0, rank1 = _augmentation_draws(0, monkeypatch), _augmentation_draws(1, monkeypatch)
    assert len(rank0) == len(rank1) == 2  # 8 images per rank, batches of 4
    assert rank0 != rank1  # the same transform at the same batch position on both ranks would halve the variety
    single = torch.Generator().manual_seed(3 * 7919 + 0)
    assert rank0[0] == float(torch.rand(1, generator=single))  # rank 0 = the single-process stream (unchanged)

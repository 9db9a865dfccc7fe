"""`leukoscope.training.stages`: a run's global epoch numbers map onto its warm-up and main stages."""

from __future__ import annotations

import pytest

from leukoscope.training.config import TrainConfig
from leukoscope.training.stages import Stage, stage_at, stages_of


def test_stages_warmup_then_main():
    config = TrainConfig(data="x", warmup_epochs=2, epochs=3, trainable="last", lr=0.1, warmup_lr=0.01)
    stages = stages_of(config)
    assert stages == [Stage("warmup", 2, "head", 0.01), Stage("main", 3, "last", 0.1)]
    assert [stage_at(stages, e)[0].name for e in range(5)] == ["warmup"] * 2 + ["main"] * 3
    assert stage_at(stages, 3) == (stages[1], 1)
    with pytest.raises(IndexError):
        stage_at(stages, 5)
    assert [s.name for s in stages_of(TrainConfig(data="x", warmup_epochs=0, epochs=1))] == ["main"]

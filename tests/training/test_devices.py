"""`leukoscope.training.devices.pick_device`: auto picks what is present; a named device that is absent is refused."""

from __future__ import annotations

import pytest
import torch

from leukoscope.errors import ConfigError
from leukoscope.training import devices
from leukoscope.training.devices import pick_device


def test_pick_device_auto_and_cpu(monkeypatch):
    assert pick_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA GPU is available"):
        pick_device("cuda")
    with pytest.raises(ConfigError, match="MPS"):
        pick_device("mps")
    with pytest.raises(ConfigError, match="unknown device 'gpu0'"):
        pick_device("gpu0")
    with pytest.raises(ConfigError, match="unsupported device"):
        pick_device("meta")

"""Which torch device a run trains on: `auto` picks the best one present; a named one must exist."""

from __future__ import annotations

import torch

from leukoscope.errors import ConfigError


def pick_device(name: str) -> torch.device:
    """`auto` (CUDA, then MPS, then the CPU), or the device named; a device that is absent is a ConfigError."""
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"--device {name} asked for, but no CUDA GPU is available")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA GPU(s)")
        if device.type == "mps" and not _mps_available():
            raise ConfigError(f"--device {name} asked for, but MPS (Apple GPU) is not available")
        if device.type not in ("cpu", "cuda", "mps"):
            raise ConfigError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())

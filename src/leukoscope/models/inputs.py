"""What a PyTorch model is fed: images decoded into uint8 tensors, and their normalisation.

The whole dataset is decoded once into an N x 3 x S x S uint8 tensor (it fits in memory); batches of it
are normalised with the model's mean and std right before the forward pass. Training augments those uint8
batches first (`leukoscope.training.augment`); evaluation and the PyTorch backend feed them as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from leukoscope.data.imaging import load_rgb
from leukoscope.models.preprocessing import Preprocess, resize_rgb


def load_uint8_batch(paths: Sequence[str | Path], preprocess: Preprocess, workers: int = 2) -> torch.Tensor:
    """Decode images in parallel into an N x 3 x S x S uint8 tensor (channels first)."""
    def one(path: str | Path) -> np.ndarray:
        return resize_rgb(load_rgb(path), preprocess)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        arrays = list(pool.map(one, paths))
    if not arrays:
        size = preprocess.input_size
        return torch.empty((0, 3, size, size), dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def normalize(batch: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """uint8 (or [0,1] float) N x 3 x H x W -> float32 normalised with the model's mean and std."""
    x = batch.float() / 255.0 if batch.dtype == torch.uint8 else batch.float()
    mean = torch.tensor(preprocess.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std

"""leukoscope.models.inputs: decoding into uint8 tensors and normalisation (torch and numpy agree)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from leukoscope.models.inputs import load_uint8_batch, normalize
from leukoscope.models.preprocessing import Preprocess, normalize_numpy, resize_rgb

PRE = Preprocess(32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def batch(n: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_resize_rgb_gives_the_models_square_input():
    image = Image.fromarray(np.zeros((40, 60, 3), np.uint8))
    out = resize_rgb(image, PRE)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    same = Image.fromarray(np.full((32, 32, 3), 7, np.uint8))
    assert (resize_rgb(same, PRE) == 7).all()


def test_load_uint8_batch_decodes_channels_first(tiny_dataset):
    paths = sorted(tiny_dataset.glob("*/*.jpg"))[:5]
    out = load_uint8_batch(paths, PRE, workers=2)
    assert out.shape == (5, 3, 32, 32) and out.dtype == torch.uint8
    first = np.array(Image.open(paths[0]).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR))
    assert torch.equal(out[0], torch.from_numpy(first).permute(2, 0, 1))
    assert load_uint8_batch([], PRE).shape == (0, 3, 32, 32)


def test_normalize_uses_the_models_mean_and_std_and_matches_numpy():
    x = batch(2, 8)
    out = normalize(x, PRE)
    assert out.dtype == torch.float32
    expected = (x[:, 1].float() / 255 - 0.456) / 0.224
    assert torch.allclose(out[:, 1], expected, atol=1e-6)
    assert torch.allclose(normalize(x.float() / 255, PRE), out, atol=1e-6)  # [0, 1] floats too
    nhwc = x.permute(0, 2, 3, 1).numpy()
    assert np.allclose(normalize_numpy(nhwc, PRE), out.numpy(), atol=1e-5)

"""The model's FLOPs and this CPU's measured matmul peak, so the speed table can say what fraction of the
peak each path reaches (benchmarks/speed.py uses them).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks import common


def model_flops(model: Any, size: int) -> int:
    """FLOPs of one forward pass on one size x size image (conv/matmul only, 2 per multiply-add)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model.eval()(torch.zeros(1, 3, size, size))
    return int(counter.get_total_flops())


def peak_gflops(n: int = 4096, repeats: int = 5) -> dict[str, Any]:
    """fp32 matmul of two n x n matrices on all cores, in torch (its BLAS is MKL) and, as a cross-check, in
    numpy (OpenBLAS): the larger is the achievable peak that "% of peak" divides by. It is a lower bound of
    the hardware's peak (MKL does not pick its fastest kernels on AMD CPUs, for one)."""
    import torch

    torch.set_num_threads(common.usable_cores())
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    seconds = common.repeat_timing(lambda: torch.mm(a, b, out=out), repeats=repeats, warmup=2)
    x, y = a.numpy(), b.numpy()
    z = np.empty((n, n), np.float32)
    np_seconds = common.repeat_timing(lambda: np.matmul(x, y, out=z), repeats=repeats, warmup=2)
    flop = 2 * n ** 3
    torch_gflops, numpy_gflops = flop / common.median(seconds) / 1e9, flop / common.median(np_seconds) / 1e9
    return {"n": n, "threads": torch.get_num_threads(), "torch_gflops": torch_gflops, "numpy_gflops": numpy_gflops,
            "gflops": max(torch_gflops, numpy_gflops), "rounds_gflops": [flop / s / 1e9 for s in seconds],
            "numpy_rounds_gflops": [flop / s / 1e9 for s in np_seconds]}

"""The frozen backbone on the CPU through ONNX Runtime: the same pooled features, about 2.5x sooner.

While the backbone is frozen (the paper protocol, head warm-ups, cell heads) training spends nearly all of its
time running that one fixed network forward: the paper protocol's 3 cached views of 1,958 training images and
its 838 scored images were ~125 of its ~150 s on 2 cores in PyTorch eager, where every BatchNorm is a separate
pass over memory and every "same" padding a copy. ONNX Runtime folds the BatchNorms into the convolutions and
runs the graph in one optimised pass: the network is exported once per pass (~2 s) and its features agree
with PyTorch's to ~1e-5. Only the frozen, inference-mode part goes through it; everything that learns stays in
PyTorch. `frozen_engine: torch` (or a failed export, with one warning line) keeps the PyTorch path, and so
does `auto` for passes of fewer than MIN_IMAGES images.
"""

from __future__ import annotations

import io
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import nn

from leukoscope.models.onnx_session import cpu_session_options
from leukoscope.training.config import TrainConfig
from leukoscope.training.network import PooledFeatures

MIN_IMAGES = 256  # `auto`: smaller frozen passes stay in PyTorch (the export would cost what it saves)


class OnnxFrozen(nn.Module):
    """A frozen nn.Module (normalised N x 3 x S x S in, a float tensor out) run by ONNX Runtime on the CPU.

    Drop-in where the PyTorch module was called in inference mode (`predict_logits`, `score_model`): it
    takes and returns torch tensors. The graph has a fixed batch size (`batch`): with every shape known,
    ONNX Runtime folds the "same" paddings' shape arithmetic and fuses each padding into its convolution
    (1.5x faster on the paper protocol's network); a short batch is padded with zeros and cut back. The
    chunks of one call run `streams` at a time, each on one thread (one run on two threads waits at a
    barrier after every operator: ~1.25x slower on 2 cores). It holds no trainable parameters.
    """

    def __init__(self, session: Any, input_name: str, batch: int, streams: int = 1) -> None:
        super().__init__()
        self.session, self.input_name, self.batch, self.streams = session, input_name, batch, streams

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        short = self.batch - len(chunk)
        if short:
            chunk = np.concatenate([chunk, np.zeros((short, *chunk.shape[1:]), chunk.dtype)])
        return self.session.run(None, {self.input_name: chunk})[0][: self.batch - short]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        chunks = [array[i:i + self.batch] for i in range(0, len(array), self.batch)] or [array]
        if self.streams > 1 and len(chunks) > 1:
            with ThreadPoolExecutor(max_workers=self.streams) as pool:
                outputs = list(pool.map(self._run, chunks))
        else:
            outputs = [self._run(chunk) for chunk in chunks]
        return torch.from_numpy(np.concatenate(outputs))


def use_onnxruntime(config: TrainConfig, device: torch.device, images: int) -> bool:
    """ONNX Runtime for a frozen pass over `images` images: asked for, or `auto` on the CPU for a pass large
    enough to repay the export (~1-2 s, about what it saves on MIN_IMAGES images at 224 px); on GPUs PyTorch
    is already fast."""
    if config.frozen_engine == "torch" or device.type != "cpu":
        return False
    if config.frozen_engine == "auto" and images < MIN_IMAGES:
        return False
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def onnx_frozen(module: nn.Module, input_size: int, batch: int, threads: int | None = None) -> OnnxFrozen:
    """Export `module` (in eval mode, as it is now) for batches of `batch` images to ONNX in memory and open it
    in ONNX Runtime: one single-threaded session run by `threads` (default: torch's) streams side by side.

    Raises RuntimeError when the export or the session fails (the caller falls back to PyTorch)."""
    import onnxruntime as ort

    module = module.eval()
    streams = max(1, threads or torch.get_num_threads())
    dummy = torch.zeros(max(1, batch), 3, input_size, input_size)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (dummy,), buffer, opset_version=17, dynamo=False, input_names=["input"],
                              output_names=["output"])
        session = ort.InferenceSession(buffer.getvalue(), cpu_session_options(1), providers=["CPUExecutionProvider"])
    except Exception as exc:  # any exporter or runtime failure: PyTorch still works
        raise RuntimeError(f"{type(exc).__name__}: {exc}") from None
    return OnnxFrozen(session, session.get_inputs()[0].name, max(1, batch), streams)


def frozen_module(module: nn.Module, config: TrainConfig, device: torch.device, input_size: int,
                  images: int) -> nn.Module:
    """`module` itself, or the same network through ONNX Runtime for a pass over `images` images where
    `use_onnxruntime` says so."""
    if not use_onnxruntime(config, device, images):
        return module
    streams = max(1, torch.get_num_threads())
    try:  # the callers pass eval_batch_size images at a time: one chunk per stream
        return onnx_frozen(module, input_size, -(-config.eval_batch_size // streams), streams)
    except RuntimeError as exc:
        if config.frozen_engine == "onnxruntime":
            raise
        print(f"warning: frozen backbone stays in PyTorch (ONNX export failed: {exc})", file=sys.stderr)
        return module


def frozen_body(model: nn.Module, config: TrainConfig, device: torch.device, input_size: int,
                images: int) -> nn.Module:
    """The pooled features of the frozen backbone of `model` for a pass over `images` images, as fast as this
    machine allows."""
    return frozen_module(PooledFeatures(model), config, device, input_size, images)

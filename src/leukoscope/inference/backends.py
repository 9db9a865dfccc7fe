"""Inference engines behind a Predictor: ONNX Runtime and PyTorch, with one interface.

Both return (logits, penultimate features) for a normalised N x 3 x S x S float32 batch, so calibration,
out-of-distribution scores and review flags are computed once, in numpy, whatever runs the network.
ONNX Runtime is the fast path on CPUs (several times faster than PyTorch eager) and needs no torch at
prediction time; PyTorch serves packages without ONNX, run folders, and Grad-CAM.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from leukoscope.errors import ModelError
from leukoscope.models.onnx_session import cpu_session_options


def cpu_count() -> int:
    """Cores this process may use (affinity-aware, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


# ------------------------------------------------------------------------------------------- backends


class OnnxBackend:
    """ONNX Runtime session with outputs `logits` and `features`."""

    name = "onnx"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = cpu_session_options(threads or cpu_count())
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelError(f"cannot load ONNX model {path}: {exc}") from None
        self.input_name = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        if outputs[:2] != ["logits", "features"]:
            raise ModelError(f"{path} has outputs {outputs}; expected ['logits', 'features']")

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, feats = self.session.run(["logits", "features"], {self.input_name: x})
        return np.asarray(logits), np.asarray(feats)


class TorchBackend:
    """A timm network in eval mode on the CPU, returning the same two outputs as the ONNX model."""

    name = "torch"

    def __init__(self, model: Any, threads: int | None = None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.model = model.eval()

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        from leukoscope.models.factory import features

        with torch.inference_mode():
            feats = features(self.model, torch.from_numpy(np.ascontiguousarray(x)))
            logits = self.model.get_classifier()(feats)
        return logits.float().numpy(), feats.float().numpy()


def load_torch_file(path: str | Path) -> Any:
    """The network stored in a package's model.pt (fp16 weights, computed in fp32)."""
    import torch

    from leukoscope.models.factory import ModelSpec, build_model

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v.float() if v.is_floating_point() else v for k, v in payload["model"].items()}
        return build_model(ModelSpec.from_dict(payload["spec"]), state).eval()
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"cannot load {path}: {type(exc).__name__}: {exc}") from None

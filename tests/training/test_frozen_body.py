"""The frozen backbone through ONNX Runtime: the same features as PyTorch, and PyTorch whenever it cannot run."""

from __future__ import annotations

import pytest
import torch

from leukoscope.models.factory import ModelSpec, create_model
from leukoscope.models.preprocessing import Preprocess
from leukoscope.training import frozen_body as fb
from leukoscope.training.config import TrainConfig
from leukoscope.training.dataset import TensorSet
from leukoscope.training.network import Classifier, PooledFeatures
from leukoscope.training.steps import frozen_view_features

CPU = torch.device("cpu")


def _model(pad_type: str = "") -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(ModelSpec("test_efficientnet", 4, 0.0, pad_type), weights="none").eval()


# "same": the paper protocol's Keras padding; batches of 4: one chunk, a short one, several side by side, none
@pytest.mark.parametrize(("pad_type", "n", "threads"), [("same", 4, 1), ("same", 9, 2), ("", 2, 1), ("", 0, 2)])
def test_onnx_features_match_pytorch(pad_type, n, threads):
    model = _model(pad_type)
    x = torch.randn(n, 3, 32, 32)
    with torch.no_grad():
        expected = PooledFeatures(model)(x)
    frozen = fb.onnx_frozen(PooledFeatures(model), 32, batch=4, threads=threads)
    assert (frozen.batch, frozen.streams) == (4, threads)
    got = frozen(x)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert not list(frozen.parameters())  # nothing in it can ever be trained


def test_cached_views_are_the_same_with_either_engine(monkeypatch):
    exports = []
    real = fb.onnx_frozen
    monkeypatch.setattr(fb, "onnx_frozen", lambda *args, **kw: exports.append(1) or real(*args, **kw))
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    data, preprocess = TensorSet(images, torch.arange(6) % 4), Preprocess(32, (0.5,) * 3, (0.25,) * 3)
    net = Classifier(_model(), freeze_bn=True)
    views = {engine: frozen_view_features(net, data, TrainConfig(data="x", frozen_views=2, augment="paper",
                                                                  frozen_engine=engine, eval_batch_size=4), preprocess)
             for engine in ("torch", "onnxruntime")}
    assert exports == [1]  # one export for the onnxruntime pass, none for the torch one
    assert views["torch"].shape == (2, 6, views["torch"].shape[2])
    assert torch.allclose(views["torch"], views["onnxruntime"], atol=1e-4, rtol=1e-4)


def test_which_engine_runs_a_frozen_pass():
    big = fb.MIN_IMAGES
    assert fb.use_onnxruntime(TrainConfig(data="x"), CPU, big)  # auto on the CPU, a pass worth an export
    assert not fb.use_onnxruntime(TrainConfig(data="x"), CPU, big - 1)  # too small to repay the export
    assert fb.use_onnxruntime(TrainConfig(data="x", frozen_engine="onnxruntime"), CPU, 1)  # asked for: always
    assert not fb.use_onnxruntime(TrainConfig(data="x", frozen_engine="torch"), CPU, big)
    assert not fb.use_onnxruntime(TrainConfig(data="x"), torch.device("cuda"), big)  # GPUs keep PyTorch
    with pytest.raises(Exception, match="frozen_engine"):
        TrainConfig(data="x", frozen_engine="tensorrt")


def test_a_failed_export_keeps_pytorch_with_one_warning_unless_onnxruntime_was_asked_for(monkeypatch, capsys):
    def broken(module, input_size, batch, threads=None):
        raise RuntimeError("UnsupportedOperatorError: no symbolic for foo")

    monkeypatch.setattr(fb, "onnx_frozen", broken)
    model = _model()
    assert fb.frozen_module(model, TrainConfig(data="x"), CPU, 32, fb.MIN_IMAGES) is model
    assert capsys.readouterr().err.strip().splitlines() == [
        "warning: frozen backbone stays in PyTorch (ONNX export failed: UnsupportedOperatorError: no symbolic for foo)"]
    with pytest.raises(RuntimeError, match="no symbolic for foo"):
        fb.frozen_module(model, TrainConfig(data="x", frozen_engine="onnxruntime"), CPU, 32, 1)

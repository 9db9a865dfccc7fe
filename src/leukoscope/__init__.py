"""leukoscope: ALL detection and B-cell subtyping in peripheral blood smear images.

Research software, not a certified medical device.

>>> import leukoscope
>>> predictor = leukoscope.load_model()          # the bundled package      # doctest: +SKIP
>>> [p.label for p in predictor.predict_paths(["smear.jpg"])]               # doctest: +SKIP

The heavy parts (PyTorch training, ONNX Runtime inference, evaluation) are imported on first use, so
`import leukoscope` stays fast for the data tools.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from leukoscope.data.classes import CANONICAL_CLASSES, resolve_classes
from leukoscope.data.discover import check, discover
from leukoscope.data.manifest import ImageRecord, Manifest, read_manifest_csv
from leukoscope.data.split import split
from leukoscope.errors import DataError, ImageError, LeukoscopeError, ModelError, UsageError

_LAZY = {
    "load_model": ("inference.predictor", "load_predictor"),
    "load_predictor": ("inference.predictor", "load_predictor"),
    "Predictor": ("inference.predictor", "Predictor"),
    "Prediction": ("inference.prediction", "Prediction"),
    "TrainConfig": ("training.config", "TrainConfig"),
    "resolve_config": ("training.config", "resolve_config"),
    "fit": ("training.loop", "fit"),
    "evaluate": ("evaluation.evaluate", "evaluate"),
    "export_run": ("inference.export", "export_run"),
    "gradcam_overlay": ("inference.explain", "gradcam_overlay"),
}

__all__ = [
    "CANONICAL_CLASSES",
    "DataError",
    "ImageError",
    "ImageRecord",
    "LeukoscopeError",
    "Manifest",
    "ModelError",
    "UsageError",
    "__version__",
    "check",
    "discover",
    "read_manifest_csv",
    "resolve_classes",
    "split",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    """Import the heavy modules only when their names are first used."""
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'leukoscope' has no attribute {name!r}")

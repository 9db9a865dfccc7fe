"""leukoscope: ALL detection and B-cell subtyping in peripheral blood smear images.

Research software, not a certified medical device.

>>> import leukoscope
>>> predictor = leukoscope.load_model()          # the bundled package      # doctest: +SKIP
>>> [p.label for p in predictor.predict_paths(["smear.jpg"])]               # doctest: +SKIP

The heavy parts (PyTorch training, ONNX Runtime inference, evaluation) are imported on first use, so
`import leukoscope` stays fast for the data tools. `__version__` comes from the installed package's
metadata (pyproject.toml is its one source), also read on first use.
"""

from __future__ import annotations

from typing import Any

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


def _version() -> str:
    """The installed distribution's version: one source, pyproject.toml."""
    from importlib.metadata import PackageNotFoundError, version  # not at import: it costs start-up time

    try:
        return version("leukoscope")
    except PackageNotFoundError:  # a source tree on sys.path that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    """Import the heavy modules (and read the version) only when their names are first used."""
    if name == "__version__":
        value: Any = _version()
    elif name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attribute)
    else:
        raise AttributeError(f"module 'leukoscope' has no attribute {name!r}")
    globals()[name] = value
    return value

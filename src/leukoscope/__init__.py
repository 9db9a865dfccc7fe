"""leukoscope: ALL detection and B-cell subtyping in peripheral blood smear images.

Research software, not a certified medical device.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .classes import CANONICAL_CLASSES, resolve_classes
from .data import check, discover, split
from .errors import DataError, ImageError, LeukoscopeError, ModelError, UsageError
from .manifest import ImageRecord, Manifest, read_manifest_csv

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
]

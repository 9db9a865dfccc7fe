"""A model per clinic: each package loaded once per server process, chosen per request by the caller's clinic.

A clinic predicts with the server's own package (`serve --model`, the bundled one by default) unless an admin
picked another (`leukoscope clinics set-model NAME PACKAGE`: a folder made by `leukoscope adapt`). Which
package a clinic uses is read from the clinics table and remembered for `ttl_s` seconds, so the default path
costs no query per prediction and a change reaches every server process within seconds, without a
restart. Loaded packages are kept (one per folder, however many clinics share it): loading one takes
seconds and hundreds of MB, so a process loads each at most once, on the first request that needs it.

Each `LoadedModel` carries its own locks: Grad-CAM hooks a PyTorch network, so two overlays of one model
at once (or an overlay during a PyTorch-backend prediction) would mix activations; different models run
freely side by side.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from leukoscope.errors import ModelError
from leukoscope.serve.store import Store

DEFAULT_PACKAGE = "bundled"  # what predictions record as their package when the server runs the bundled one
CLINIC_MODEL_TTL_S = 5.0
Loader = Callable[[str], Any]  # package folder -> a loaded predictor (leukoscope.inference.predictor.load_predictor)


def model_version(info: dict[str, Any]) -> str:
    """A short, stable name for the exact weights: `<name>@<12 hex of the weight hashes>`.

    Stored with every prediction so history rows stay attributable after the model is replaced.
    """
    name = str(info.get("name") or info.get("backbone") or "model")
    if info.get("version"):
        name = f"{name}-{info['version']}"
    basis = info.get("files") or info
    digest = hashlib.sha256(json.dumps(basis, sort_keys=True, default=str).encode()).hexdigest()
    return f"{name}@{digest[:12]}"


@dataclass
class LoadedModel:
    """One loaded package: the predictor, what predictions record about it, and its locks."""

    predictor: Any
    package: str  # the folder (or "bundled"), recorded with each prediction as model_package
    version: str = ""
    classes: list[str] = field(default_factory=list)
    gradcam_lock: threading.Lock = field(default_factory=threading.Lock)
    predict_lock: Any = None

    def __post_init__(self) -> None:
        self.version = model_version(self.predictor.info)
        self.classes = list(self.predictor.classes)
        torch_backend = getattr(self.predictor, "backend", None) == "torch"
        self.predict_lock = self.gradcam_lock if torch_backend else contextlib.nullcontext()


class ModelRegistry:
    """The server's default model and every clinic's, loaded on first use and kept."""

    def __init__(self, default: LoadedModel, store: Store, loader: Loader | None = None, *,
                 ttl_s: float = CLINIC_MODEL_TTL_S, clock: Callable[[], float] = time.monotonic,
                 default_path: str | None = None) -> None:
        self.default = default
        self.default_path = default_path  # the default's folder, when known: a clinic choosing it shares it
        self.store = store
        self.loader = loader
        self.ttl_s, self.clock = ttl_s, clock
        self._choice: dict[int, tuple[float, str | None]] = {}  # clinic id -> (read at, package or None)
        self._loaded: dict[str, LoadedModel] = {}
        self._load_lock = threading.Lock()

    def package_of(self, clinic_id: int) -> str | None:
        """The clinic's package folder (None: the server's default), as read at most `ttl_s` ago."""
        now = self.clock()
        cached = self._choice.get(clinic_id)
        if cached is not None and now - cached[0] < self.ttl_s:
            return cached[1]
        package = self.store.scalar("SELECT model FROM clinics WHERE id = :id", {"id": clinic_id})
        self._choice[clinic_id] = (now, package or None)
        return package or None

    def forget_choice(self, clinic_id: int) -> None:
        """Read the clinic's choice again on its next request (this process changed it just now)."""
        self._choice.pop(clinic_id, None)

    def for_clinic(self, clinic_id: int | None) -> LoadedModel:
        """The model `clinic_id` predicts with (None, a network admin's view of every clinic: the default)."""
        package = None if clinic_id is None else self.package_of(clinic_id)
        if package is None or package in (self.default.package, self.default_path):
            return self.default
        found = self._loaded.get(package)
        if found is not None:
            return found
        with self._load_lock:  # one load per package, however many requests ask at once
            found = self._loaded.get(package)
            if found is None:
                if self.loader is None:
                    raise ModelError("this server cannot load other packages")
                found = LoadedModel(self.loader(package), package)
                self._loaded[package] = found
        return found

    def loaded(self) -> Sequence[LoadedModel]:
        return [self.default, *self._loaded.values()]

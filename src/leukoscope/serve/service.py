"""What the web app does, as plain synchronous functions: the route handlers only translate HTTP.

`PredictionService.predict_uploads` is the whole upload path: sniff each file, predict the readable ones
in one batch, store them (rows + image bytes) in one transaction, and return one `UploadResult` per file in
upload order, with the sample's call (`SampleSummary`, from the stored rows themselves). It runs in the
inference thread pool, never on the event loop; the routes turn the results into JSON with `to_json`.

Clinics: every method takes the caller's clinic (`security.clinic_scope`: None for a network admin) and
reads only that clinic's rows, so another clinic's prediction is a 404, exactly like one that never
existed. Uploads are stored in the caller's own clinic and predicted with that clinic's model
(serve/models.py); each row records the package and the exact weights it came from.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from leukoscope import __version__
from leukoscope.data.fileio import sha256_bytes
from leukoscope.data.imaging import load_rgb
from leukoscope.errors import ImageError, ModelError
from leukoscope.inference.explain import WORKING_SIDE
from leukoscope.review.samples import SampleCall, sample_call
from leukoscope.serve import verifications
from leukoscope.serve.limits import RequestRejected, Upload, sniff
from leukoscope.serve.models import DEFAULT_PACKAGE, LoadedModel, Loader, ModelRegistry, model_version
from leukoscope.serve.settings import Settings
from leukoscope.serve.store import DEFAULT_CLINIC_ID, Filters, NewPrediction, Page, Store, StoredPrediction, utc_text

__all__ = ["BatchResult", "PredictionService", "SampleSummary", "UploadResult", "csv_lines", "model_version"]

THUMBNAIL_SIDE = 160
WARMUP_SOURCE = "leukoscope-warm-up.png"  # the name warm_up predicts under (fakes in tests recognise it)
PURGE_INTERVAL_S = 3600.0  # how often, at most, the retention period is applied while serving
log = logging.getLogger("leukoscope.serve")
GradcamFn = Callable[..., Image.Image]


class PredictorLike(Protocol):
    """The part of leukoscope.inference.predictor.Predictor the server uses (docs/INTERFACES.md)."""

    classes: Sequence[str]
    info: dict[str, Any]

    def predict_bytes(self, items: Sequence[tuple[str, bytes]], *, tta: bool = False) -> list[Any]: ...


def default_gradcam(predictor: Any, image: bytes, *, target: str | None = None) -> Image.Image:
    """leukoscope.inference.explain.gradcam_overlay, imported on first use (it pulls in torch and grad-cam)."""
    try:
        from leukoscope.inference.explain import gradcam_overlay
    except ImportError as exc:
        raise ModelError(f"Grad-CAM is not available in this installation ({exc})") from None
    return gradcam_overlay(predictor, image, target=target)


def links(prediction_id: str) -> dict[str, str]:
    base = f"/api/v1/predictions/{prediction_id}"
    return {"self": base, "gradcam": f"{base}/gradcam", "thumbnail": f"{base}/thumbnail", "image": f"{base}/image"}


@dataclass(frozen=True)
class UploadResult:
    """One upload's outcome: its stored prediction (`ok`), or why it was not read (`error`)."""

    file_name: str
    row: StoredPrediction | None = None
    error: str | None = None
    sha256: str = ""  # of the bytes, also for a file that could not be read

    @classmethod
    def failed(cls, name: str, data: bytes, message: str) -> UploadResult:
        return cls(name, error=message, sha256=sha256_bytes(data) if data else "")

    @property
    def ok(self) -> bool:
        return self.row is not None

    def to_json(self) -> dict[str, Any]:
        """`ok` means read and stored; `status` then says whether it got a class (ok) or was unusable
        (label null, with the reason in review_reasons / review_codes)."""
        if self.row is None:
            return {"file_name": self.file_name, "ok": False, "status": "error", "error": self.error, "id": None,
                    "sha256": self.sha256, "label": None}
        return {"file_name": self.file_name, "ok": True, "error": None, **self.row.to_json(),
                "links": links(self.row.id)}


@dataclass(frozen=True)
class SampleSummary:
    """The call on images uploaded together: leukoscope.review.samples.sample_call, the rule that
    `predict --group-by folder` uses (leukemia suspected when any usable image looks leukemic)."""

    sample_id: str
    call: SampleCall

    @classmethod
    def of(cls, rows: Sequence[StoredPrediction], classes: Sequence[str], *, sample_id: str,
           failed: int = 0) -> SampleSummary:
        return cls(sample_id, sample_call(rows, classes, failed=failed))

    def to_json(self) -> dict[str, Any]:
        return {"sample_id": self.sample_id, **self.call.to_json()}


@dataclass
class BatchResult:
    """One upload request's answer: an UploadResult per file, in upload order, and the sample's call."""

    sample_id: str
    results: list[UploadResult]
    summary: SampleSummary
    model_version: str

    @property
    def any_ok(self) -> bool:
        return any(result.ok for result in self.results)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"sample_id": self.sample_id, "model_version": self.model_version,
                                "results": [r.to_json() for r in self.results], "summary": self.summary.to_json()}
        if not self.any_ok:
            reasons = "; ".join(f"{r.file_name}: {r.error}" for r in self.results)
            body = {"detail": f"no file could be predicted ({reasons})", **body}
        return body


class PredictionService:
    """Predictor + store + settings, behind the methods the routes call."""

    def __init__(self, predictor: PredictorLike, store: Store, settings: Settings,
                 gradcam: GradcamFn | None = None, loader: Loader | None = None) -> None:
        self.store = store
        self.settings = settings
        self.gradcam = gradcam or default_gradcam
        package = str(Path(settings.model).expanduser().resolve()) if settings.model else DEFAULT_PACKAGE
        self.models = ModelRegistry(LoadedModel(predictor, package), store, loader, default_path=_bundled_path())
        self.predictor = predictor  # the server's own model (clinics without one of their own use it)
        self.classes = self.models.default.classes
        self.model_version = self.models.default.version
        self._last_purge: float | None = None

    def model_for(self, clinic: int | None) -> LoadedModel:
        """The model of a clinic (None, every clinic: the server's own)."""
        return self.models.for_clinic(clinic)

    def classes_for(self, clinic: int | None) -> list[str]:
        return self.model_for(clinic).classes

    # -- retention ---------------------------------------------------------------------------------------
    def purge_expired_images(self, *, force: bool = False) -> int:
        """Apply the retention period (settings.keep_images_days): at start-up (`force`) and then at most
        once per PURGE_INTERVAL_S, after a request has been stored. Returns how many images were purged."""
        days = self.settings.keep_images_days
        now = time.monotonic()
        if days is None or (not force and self._last_purge is not None and now - self._last_purge < PURGE_INTERVAL_S):
            return 0
        self._last_purge = now
        purged = self.store.purge_images(utc_text(datetime.now(timezone.utc) - timedelta(days=days)))
        if purged:
            log.info("purged %d uploaded image(s) older than %g days (their predictions are kept)", purged, days)
        return purged

    # -- predicting --------------------------------------------------------------------------------------
    def predict_uploads(self, uploads: Sequence[Upload], sample_id: str | None = None,
                        clinic: int = DEFAULT_CLINIC_ID) -> BatchResult:
        """Predict (with the clinic's model) and store (in the clinic) every readable upload; one entry per
        upload, in order."""
        sample_id = sample_id or uuid.uuid4().hex
        model = self.model_for(clinic)
        entries: list[UploadResult | None] = [None] * len(uploads)
        readable: list[int] = []
        for index, upload in enumerate(uploads):
            try:
                sniff(upload.data, self.settings)
                readable.append(index)
            except ImageError as exc:
                entries[index] = UploadResult.failed(upload.name, upload.data, str(exc))
        items = [(uploads[i].name, uploads[i].data) for i in readable]
        predictions = []
        if items:
            with model.predict_lock:
                predictions = model.predictor.predict_bytes(items, tta=self.settings.tta)
        rows, images, thumbnails, order = [], {}, {}, []
        for index, p in zip(readable, predictions, strict=True):
            upload = uploads[index]
            if p.status == "error":
                entries[index] = UploadResult.failed(upload.name, upload.data, p.error or "could not be read")
                continue
            sha = p.sha256 or sha256_bytes(upload.data)  # the predictor hashed these bytes already
            if sha not in images:  # the thumbnail is made here, once, inside the request's inference slot
                images[sha] = upload.data
                with contextlib.suppress(ImageError):
                    thumbnails[sha] = _thumbnail(upload.data)
            order.append(index)
            rows.append(NewPrediction(
                sample_id=sample_id, file_name=upload.name, sha256=sha, model_version=model.version,
                label=p.label, confidence=float(p.confidence),
                probabilities={k: float(v) for k, v in p.probabilities.items()}, review=bool(p.review),
                review_reasons=list(p.review_reasons),
                ood_score=None if p.ood_score is None else float(p.ood_score), width=int(p.width),
                height=int(p.height), status=p.status, review_codes=list(p.review_codes),
                review_details=dict(p.review_details), clinic_id=clinic, model_package=model.package))
        stored = self.store.add(rows, images, thumbnails) if rows else []
        self.purge_expired_images()
        for index, row in zip(order, stored, strict=True):
            entries[index] = UploadResult(row.file_name, row)
        failed = len(uploads) - len(stored)
        summary = SampleSummary.of(stored, model.classes, sample_id=sample_id, failed=failed)
        return BatchResult(sample_id, [e for e in entries if e is not None], summary, model.version)

    def sample_summary(self, sample_id: str, clinic: int | None) -> SampleSummary:
        rows = list(self.store.iter_all(Filters(sample_id=sample_id, clinic=clinic)))
        if not rows:
            raise RequestRejected(f"no predictions stored for sample {sample_id!r}", 404)
        return SampleSummary.of(rows[::-1], self.classes_for(clinic), sample_id=sample_id)

    # -- images ------------------------------------------------------------------------------------------
    def _stored(self, prediction_id: str, clinic: int | None) -> tuple[StoredPrediction, bytes]:
        row = self.prediction(prediction_id, clinic)
        data = self.store.image(row.sha256)
        if data is None:
            raise RequestRejected(f"the image of prediction {prediction_id} is not kept (retention period over)", 404)
        return row, data

    def prediction(self, prediction_id: str, clinic: int | None) -> StoredPrediction:
        """One stored prediction of `clinic` with its latest verification; 404 when there is none with this id
        there (another clinic's prediction does not exist for the caller)."""
        row = self.store.get(prediction_id, clinic)
        if row is None:
            raise RequestRejected(f"no prediction with id {prediction_id}", 404)
        return verifications.attach(self.store, [row])[0]

    def history(self, page: int, per_page: int, filters: Filters) -> Page:
        """One page of the history, each row with its latest verification."""
        result = self.store.page(page, per_page, filters)
        return replace(result, items=verifications.attach(self.store, result.items))

    def gradcam_png(self, prediction_id: str, clinic: int | None, target: str | None = None) -> bytes:
        """Grad-CAM overlay of a stored prediction's image, computed now with its clinic's model at the image's
        own size up to WORKING_SIDE a side (run it in the inference pool: it decodes and runs the network)."""
        row, data = self._stored(prediction_id, clinic)
        model = self.model_for(row.clinic_id)
        if target is not None and target not in model.classes:
            raise RequestRejected(f"unknown class {target!r}; choose from {model.classes}", 422)
        try:
            with model.gradcam_lock:
                overlay = self.gradcam(model.predictor, data, target=target or row.label)
        except ModelError as exc:
            raise RequestRejected(f"Grad-CAM is not available for this model: {exc}", 501) from None
        return _png(overlay, WORKING_SIDE)

    def image_png(self, prediction_id: str, clinic: int | None) -> bytes:
        """The uploaded image as PNG at the size the Grad-CAM overlay has, to show the two side by side
        (decodes, so run it in the inference pool)."""
        _, data = self._stored(prediction_id, clinic)
        return _png(load_rgb(data, max_side=WORKING_SIDE), WORKING_SIDE)

    def stored_thumbnail(self, prediction_id: str, clinic: int | None) -> bytes | None:
        """The thumbnail made at upload (a database read, no decoding); None when there is none yet."""
        return self.store.thumbnail(self.prediction(prediction_id, clinic).sha256)

    def thumbnail_png(self, prediction_id: str, clinic: int | None) -> bytes:
        """Make, keep and return the thumbnail of an image stored before thumbnails were made at upload
        (decodes, so run it in the inference pool); 404 when the image is no longer kept."""
        row, data = self._stored(prediction_id, clinic)
        png = _thumbnail(data)
        self.store.set_thumbnail(row.sha256, png)
        return png

    def warm_up(self) -> None:
        """One prediction and one Grad-CAM on a synthetic image at start-up, so the first real click does not
        pay for importing torch, loading model.pt and first-run allocations (about 9 s on 2 cores).
        A failure only costs that time later, so it is logged, not raised."""
        started = time.perf_counter()
        buffer = io.BytesIO()
        Image.effect_noise((224, 224), 64).convert("RGB").save(buffer, "PNG")
        sample = buffer.getvalue()
        model = self.models.default
        try:
            with model.predict_lock:
                model.predictor.predict_bytes([(WARMUP_SOURCE, sample)], tta=False)
            with model.gradcam_lock:
                self.gradcam(model.predictor, sample, target=None)
        except Exception as exc:  # e.g. a package without model.pt: Grad-CAM then answers 501 when asked
            log.warning("model warm-up incomplete (%s: %s); the first request may be slow", type(exc).__name__, exc)
            return
        log.info("model warmed up in %.1f s (one prediction and one Grad-CAM)", time.perf_counter() - started)

    # -- reading -----------------------------------------------------------------------------------------
    def model_card(self, clinic: int | None) -> dict[str, Any]:
        """The card of the model the clinic predicts with (a network admin: the server's own)."""
        model = self.model_for(clinic)
        return {"model_version": model.version, "model_package": model.package, "classes": model.classes,
                "backend": getattr(model.predictor, "backend", None),
                "model_file": getattr(model.predictor, "onnx_file", None), "card": model.predictor.info}

    def health(self, in_flight: int, clinic: int | None) -> dict[str, Any]:
        """Liveness and readiness; the model and the count of predictions are the caller's clinic's."""
        model = self.model_for(clinic)
        return {"status": "ok", "leukoscope": __version__, "model_version": model.version,
                "backend": getattr(model.predictor, "backend", None),
                "model_file": getattr(model.predictor, "onnx_file", None), "schema_version": self.store.version,
                "predictions": self.store.count(Filters(clinic=clinic)), "in_flight": in_flight,
                "capacity": self.settings.capacity}

    def csv_rows(self, filters: Filters) -> Iterator[str]:
        """The history as CSV lines (pandas-readable; one p_<class> column per class of the clinic's model)."""
        return csv_lines(verifications.attach_all(self.store, self.store.iter_all(filters)),
                         self.classes_for(filters.clinic))


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# verified_label is empty when unverified or unusable (verified_unusable 1); agrees_with_model is 1 or 0
VERIFIED_COLUMNS = ("verified_label", "verified_unusable", "verified_by", "verified_at", "verified_comment",
                    "agrees_with_model")


def _cell(value: Any) -> Any:
    """Neutralise spreadsheet formulas in text cells (a file named '=HYPERLINK(...)' stays text)."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_lines(rows: Iterable[StoredPrediction], classes: Sequence[str]) -> Iterator[str]:
    """The model's call, then (last, so older readers keep their columns) the latest verified call beside it."""
    header = ["id", "created_at", "sample_id", "file_name", "sha256", "model_version", "status", "label",
              "confidence", *[f"p_{c}" for c in classes], "review", "review_codes", "review_reasons", "ood_score",
              "width", "height", "probabilities", *VERIFIED_COLUMNS]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")

    def flush() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow(header)
    yield flush()
    for r in rows:
        writer.writerow([r.id, r.created_at, r.sample_id, _cell(r.file_name), r.sha256, r.model_version, r.status,
                         r.label or "", round(r.confidence, 6), *[round(r.probabilities.get(c, 0.0), 6) for c in classes],
                         int(r.review), "; ".join(r.review_codes), _cell("; ".join(r.review_reasons)),
                         "" if r.ood_score is None else round(r.ood_score, 4), r.width, r.height,
                         json.dumps(r.probabilities), *_verified_cells(r)])
        yield flush()


def _verified_cells(row: StoredPrediction) -> list[Any]:
    v = row.verification
    if v is None:
        return [""] * len(VERIFIED_COLUMNS)
    return [v.label or "", int(v.unusable), _cell(v.user_name), v.created_at, _cell(v.comment),
            int(v.agrees_with(row.label))]


def _bundled_path() -> str | None:
    """The bundled package's folder (what `clinics set-model NAME <that folder>` would name), if installed."""
    try:
        from leukoscope.inference.package import bundled_package_path

        return str(bundled_package_path().resolve())
    except Exception:  # the bundled package is optional to this comparison, never to serving
        return None


def _thumbnail(data: bytes) -> bytes:
    """A THUMBNAIL_SIDE PNG of an upload, decoded already reduced (a 7000x7000 JPEG at 1/8 scale)."""
    return _png(load_rgb(data, max_side=THUMBNAIL_SIDE), THUMBNAIL_SIDE)


def _png(image: Image.Image, max_side: int) -> bytes:
    image = image.convert("RGB") if image.mode not in ("RGB", "RGBA") else image
    if max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=False)
    return buffer.getvalue()

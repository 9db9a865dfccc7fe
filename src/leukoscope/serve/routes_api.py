"""JSON API under /api/v1: handlers only translate HTTP to service calls and back.

Every handler passes the caller's clinic (`clinic_scope`) to the service: another clinic's predictions,
samples, images and exports answer 404 or are simply not in a list. Prediction ids in URLs are UUIDs.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from leukoscope.serve.api_errors import error_responses
from leukoscope.serve.context import ServerContext, get_ctx
from leukoscope.serve.limits import FILE_FIELD, SAMPLE_FIELD, SAMPLE_ID_MAX, SAMPLE_ID_PATTERN, read_uploads
from leukoscope.serve.security import clinic_scope, home_clinic
from leukoscope.serve.store import MAX_PAGE, MAX_PER_PAGE, Filters

# Every route may meet the Host check (400), the token (401, 429) or a fault (500); routes add their own.
router = APIRouter(tags=["api"], responses=error_responses(400, 401, 429, 500))
Ctx = Annotated[ServerContext, Depends(get_ctx)]
PredictionId = Annotated[uuid.UUID, Path(description="id of a stored prediction (a UUID)")]
IMAGE_CACHE = {"Cache-Control": "private, max-age=86400"}
PNG = {200: {"description": "PNG image", "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}}
BY_ID = error_responses(404, 422)
QUEUED = error_responses(404, 422, 503)


def attachment(name: str) -> str:
    """Content-Disposition for a download named from client text (RFC 6266): an ASCII fallback name with
    nothing that could end the quoting, and the exact name percent-encoded as UTF-8 (RFC 5987), so
    quotes, non-ASCII or CR/LF in a sample id never break or split the header."""
    fallback = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": [FILE_FIELD],
            "properties": {
                FILE_FIELD: {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1,
                             "description": "one or more images (JPEG, PNG, BMP, TIFF, WebP)"},
                SAMPLE_FIELD: {"type": "string", "pattern": SAMPLE_ID_PATTERN, "maxLength": SAMPLE_ID_MAX,
                               "description": "optional id grouping several requests (empty: none)"},
            },
        }}},
    }
}


def with_class_names(schema: dict[str, Any], classes: Sequence[str]) -> dict[str, Any]:
    """Name the loaded model's classes where a value must be one (`target` of Grad-CAM, a verification's
    `label`), so the schema says what the route accepts; known only once the model is loaded, so added when
    the schema is built."""
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            for param in operation.get("parameters", []) if isinstance(operation, dict) else []:
                if param.get("name") == "target" and param.get("in") == "query":
                    param["schema"] = {"anyOf": [{"type": "string", "enum": list(classes)}, {"type": "null"}],
                                       "description": param["schema"].get("description", "")}
    label = schema.get("components", {}).get("schemas", {}).get("VerifyAsClass", {}).get("properties", {}).get("label")
    if label is not None:
        label["enum"] = list(classes)
    return schema


def history_filters(
    request: Request,
    label: Annotated[str | None, Query(description="only this predicted class")] = None,
    review: Annotated[bool | None, Query(description="only flagged (true) or unflagged (false)")] = None,
    sample_id: Annotated[str | None, Query(max_length=64)] = None,
    verified: Annotated[bool | None, Query(description="only verified (true) or awaiting verification (false)")] = None,
    disagrees: Annotated[bool | None, Query(description="only predictions whose latest verification differs from "
                                                       "(true) or equals (false) the model's call")] = None,
) -> Filters:
    return Filters(label=label or None, review=review, sample_id=sample_id or None, verified=verified,
                   disagrees=disagrees, clinic=clinic_scope(request))


FiltersDep = Annotated[Filters, Depends(history_filters)]


@router.get("/health")
@router.head("/health", include_in_schema=False)
async def health(request: Request, ctx: Ctx) -> dict[str, Any]:
    """Liveness and readiness: the model is loaded and the database answers (counts: the caller's clinic)."""
    return await ctx.run_io(ctx.service.health, ctx.gate.in_flight, clinic_scope(request))


@router.get("/model", responses=error_responses(503))
async def model(request: Request, ctx: Ctx) -> dict[str, Any]:
    """The card of the model the caller's clinic predicts with: classes, preprocessing, calibration, review
    thresholds, metrics, and which package it is."""
    return await ctx.run_io(ctx.service.model_card, clinic_scope(request))


@router.post("/predict", openapi_extra=_UPLOAD_BODY, responses=error_responses(403, 413, 415, 422, 503))
async def predict(request: Request, ctx: Ctx) -> JSONResponse:
    """Predict one or many images; every readable one is stored before this answer is sent."""
    async with ctx.admitted() as slot:
        uploads, sample_id = await read_uploads(request, ctx.settings)
        batch = await slot.run(ctx.service.predict_uploads, uploads, sample_id, home_clinic(request))
    body = batch.to_json()
    if not batch.any_ok:  # 422 answers the common error shape too, with the per-file results kept
        body.setdefault("detail", "no uploaded file could be predicted: see each file's error in results")
    return JSONResponse(body, status_code=200 if batch.any_ok else 422)


@router.get("/predictions", responses=error_responses(422))
async def predictions(
    ctx: Ctx, filters: FiltersDep,
    page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
    per_page: Annotated[int, Query(ge=1, le=MAX_PER_PAGE)] = 50,
) -> dict[str, Any]:
    """The prediction history, newest first, paginated; each with its latest verification (null: none)."""
    result = await ctx.run_io(ctx.service.history, page, per_page, filters)
    return {"items": [row.to_json() for row in result.items], "page": result.page,
            "per_page": result.per_page, "total": result.total, "pages": result.pages}


@router.get("/predictions.csv", response_class=StreamingResponse, responses={
    200: {"description": "CSV, one row per prediction", "content": {"text/csv": {"schema": {"type": "string"}}}},
    **error_responses(422)})
async def predictions_csv(ctx: Ctx, filters: FiltersDep) -> StreamingResponse:
    """The (filtered) history as CSV, streamed: the model's call, and the latest verified call beside it."""
    name = f"leukoscope-{filters.sample_id or 'history'}.csv"
    return StreamingResponse(ctx.service.csv_rows(filters), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": attachment(name)})


@router.get("/predictions/{prediction_id}", responses=BY_ID)
async def prediction(request: Request, ctx: Ctx, prediction_id: PredictionId) -> dict[str, Any]:
    """One stored prediction, with its latest verification (null: none)."""
    row = await ctx.run_io(ctx.service.prediction, str(prediction_id), clinic_scope(request))
    return row.to_json()


@router.get("/predictions/{prediction_id}/gradcam", response_class=Response, responses={**PNG, **QUEUED})
async def gradcam(
    request: Request, ctx: Ctx, prediction_id: PredictionId,
    target: Annotated[str | None, Query(description="class to explain (default: the predicted one)")] = None,
) -> Response:
    """Grad-CAM overlay (PNG) of a stored prediction, computed with its clinic's model."""
    clinic = clinic_scope(request)
    png = await ctx.run_inference(ctx.service.gradcam_png, str(prediction_id), clinic, target)
    row = await ctx.run_io(ctx.service.prediction, str(prediction_id), clinic)
    headers = {**IMAGE_CACHE, "X-Model-Version": (await ctx.run_io(ctx.service.model_for, row.clinic_id)).version}
    return Response(png, media_type="image/png", headers=headers)


@router.get("/predictions/{prediction_id}/thumbnail", response_class=Response, responses={**PNG, **QUEUED})
async def thumbnail(request: Request, ctx: Ctx, prediction_id: PredictionId) -> Response:
    """A small PNG of the uploaded image (made at upload; for older rows made once, in the inference queue)."""
    clinic = clinic_scope(request)
    png = await ctx.run_io(ctx.service.stored_thumbnail, str(prediction_id), clinic)
    if png is None:
        png = await ctx.run_inference(ctx.service.thumbnail_png, str(prediction_id), clinic)
    return Response(png, media_type="image/png", headers=IMAGE_CACHE)


@router.get("/predictions/{prediction_id}/image", response_class=Response, responses={**PNG, **QUEUED})
async def image(request: Request, ctx: Ctx, prediction_id: PredictionId) -> Response:
    """The uploaded image as PNG at the Grad-CAM overlay's size (its own, up to 1024 px a side), to compare."""
    png = await ctx.run_inference(ctx.service.image_png, str(prediction_id), clinic_scope(request))
    return Response(png, media_type="image/png", headers=IMAGE_CACHE)


@router.get("/samples/{sample_id}", responses=error_responses(404, 422))
async def sample(request: Request, ctx: Ctx, sample_id: str) -> dict[str, Any]:
    """The sample call on every prediction stored under one sample id (in the caller's clinic): leukemia
    suspected as soon as one usable image looks leukemic, Benign only when all do
    (leukoscope.review.samples.sample_call)."""
    summary = await ctx.run_io(ctx.service.sample_summary, sample_id, clinic_scope(request))
    return summary.to_json()

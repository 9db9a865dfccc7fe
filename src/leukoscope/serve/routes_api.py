"""JSON API under /api/v1: handlers only translate HTTP to service calls and back."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .context import ServerContext, get_ctx
from .limits import FILE_FIELD, SAMPLE_FIELD, read_uploads
from .store import Filters

router = APIRouter(tags=["api"])
Ctx = Annotated[ServerContext, Depends(get_ctx)]
IMAGE_CACHE = {"Cache-Control": "private, max-age=86400"}

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": [FILE_FIELD],
            "properties": {
                FILE_FIELD: {"type": "array", "items": {"type": "string", "format": "binary"},
                             "description": "one or more images (JPEG, PNG, BMP, TIFF, WebP)"},
                SAMPLE_FIELD: {"type": "string", "description": "optional id grouping several requests"},
            },
        }}},
    }
}


def history_filters(
    label: Annotated[str | None, Query(description="only this predicted class")] = None,
    review: Annotated[bool | None, Query(description="only flagged (true) or unflagged (false)")] = None,
    sample_id: Annotated[str | None, Query(max_length=64)] = None,
) -> Filters:
    return Filters(label=label or None, review=review, sample_id=sample_id or None)


FiltersDep = Annotated[Filters, Depends(history_filters)]


@router.get("/health")
@router.head("/health", include_in_schema=False)
async def health(ctx: Ctx) -> dict[str, Any]:
    """Liveness and readiness: the model is loaded and the database answers."""
    return await ctx.run_io(ctx.service.health, ctx.gate.in_flight)


@router.get("/model")
async def model(ctx: Ctx) -> dict[str, Any]:
    """The loaded model's card: classes, preprocessing, calibration, review thresholds, metrics."""
    return ctx.service.model_card()


@router.post("/predict", openapi_extra=_UPLOAD_BODY)
async def predict(request: Request, ctx: Ctx) -> JSONResponse:
    """Predict one or many images; every readable one is stored before this answer is sent."""
    async with ctx.admitted() as slot:
        uploads, sample_id = await read_uploads(request, ctx.settings)
        batch = await slot.run(ctx.service.predict_uploads, uploads, sample_id)
    return JSONResponse(batch.to_json(), status_code=200 if batch.any_ok else 422)


@router.get("/predictions")
async def predictions(
    ctx: Ctx, filters: FiltersDep,
    page: Annotated[int, Query(ge=1)] = 1,
    per_page: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    """The prediction history, newest first, paginated."""
    result = await ctx.run_io(ctx.store.page, page, per_page, filters)
    return {"items": [row.to_json() for row in result.items], "page": result.page,
            "per_page": result.per_page, "total": result.total, "pages": result.pages}


@router.get("/predictions.csv", response_class=StreamingResponse)
async def predictions_csv(ctx: Ctx, filters: FiltersDep) -> StreamingResponse:
    """The (filtered) history as CSV, streamed."""
    name = f"leukoscope-{filters.sample_id or 'history'}.csv"
    return StreamingResponse(ctx.service.csv_rows(filters), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/predictions/{prediction_id}")
async def prediction(ctx: Ctx, prediction_id: int) -> dict[str, Any]:
    """One stored prediction."""
    row = await ctx.run_io(ctx.service.prediction, prediction_id)
    return row.to_json()


@router.get("/predictions/{prediction_id}/gradcam", response_class=Response)
async def gradcam(
    ctx: Ctx, prediction_id: int,
    target: Annotated[str | None, Query(description="class to explain (default: the predicted one)")] = None,
) -> Response:
    """Grad-CAM overlay (PNG) of a stored prediction, computed with the loaded model."""
    png = await ctx.run_inference(ctx.service.gradcam_png, prediction_id, target)
    headers = {**IMAGE_CACHE, "X-Model-Version": ctx.service.model_version}
    return Response(png, media_type="image/png", headers=headers)


@router.get("/predictions/{prediction_id}/thumbnail", response_class=Response)
async def thumbnail(ctx: Ctx, prediction_id: int) -> Response:
    """A small PNG of the uploaded image."""
    png = await ctx.run_io(ctx.service.thumbnail_png, prediction_id)
    return Response(png, media_type="image/png", headers=IMAGE_CACHE)


@router.get("/samples/{sample_id}")
async def sample(ctx: Ctx, sample_id: str) -> dict[str, Any]:
    """The per-sample summary of every prediction stored under one sample id."""
    return await ctx.run_io(ctx.service.sample_summary, sample_id)

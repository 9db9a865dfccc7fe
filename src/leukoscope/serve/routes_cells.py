"""Cells: the JSON API (/api/v1/samples/{id}/cells, /api/v1/cells/...) and the gallery page (/cells).

A sample's cells are computed the first time its gallery is asked for (API or page), in the bounded
inference pool (503 + Retry-After when it is full), and read from the database afterwards
(serve/cell_service.py). Cell verifications take the body, roles and rules of a field verification. Everything
is the caller's clinic's: another clinic's sample or cell answers 404 (the page: "no such sample").
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field

from leukoscope.serve.api_errors import error_responses
from leukoscope.serve.context import ServerContext, get_ctx
from leukoscope.serve.limits import SAMPLE_ID_MAX, SAMPLE_ID_PATTERN, RequestRejected
from leukoscope.serve.routes_api import IMAGE_CACHE, PNG
from leukoscope.serve.routes_pages import DISCLAIMER
from leukoscope.serve.routes_verify import MAX_WORKLIST, WRITE, VerifyAsClass, VerifyUnusable
from leukoscope.serve.security import clinic_scope, require_user

router = APIRouter(tags=["cells"], responses=error_responses(400, 401, 429, 500))
pages = APIRouter(include_in_schema=False)
Ctx = Annotated[ServerContext, Depends(get_ctx)]
CellId = Annotated[uuid.UUID, Path(description="id of a stored cell (a UUID)")]
SampleId = Annotated[str, Path(pattern=SAMPLE_ID_PATTERN, min_length=1, max_length=SAMPLE_ID_MAX,
                               description="the sample id the images were uploaded under")]


class CellVerificationOut(BaseModel):
    """One stored verification of a cell (`label` null when marked unusable)."""

    id: str = Field(description="the verification's id (a UUID)")
    cell_id: str = Field(description="the cell's id (a UUID)")
    created_at: str
    user: str
    label: str | None
    unusable: bool
    comment: str


class CellTrailOut(BaseModel):
    """Every verification of one cell, oldest first (the last one is its verified class)."""

    items: list[CellVerificationOut]


async def gallery_of(request: Request, ctx: ServerContext, sample_id: str) -> Any:
    """The sample's gallery, its cells computed first if some field has none yet (in the inference pool)."""
    clinic = clinic_scope(request)
    if await ctx.run_io(ctx.cells.needs_compute, sample_id, clinic):
        await ctx.run_inference(ctx.cells.compute, sample_id, clinic)
    return await ctx.run_io(ctx.cells.gallery, sample_id, clinic)


@router.get("/samples/{sample_id}/cells", responses=error_responses(404, 422, 503))
async def sample_cells(request: Request, ctx: Ctx, sample_id: SampleId) -> dict[str, Any]:
    """The white cells of every field of a sample: counts per class, each field's status (ok, "no cell found",
    unusable, error) and every cell with its class, probabilities, review flag, bounding box (the file's
    pixels) and field. Computed with the clinic's model the first time it is asked for (503 + Retry-After
    when the server is busy), stored, and read afterwards."""
    return (await gallery_of(request, ctx, sample_id)).to_json()


@router.get("/cells/{cell_id}", responses=error_responses(404, 422))
async def cell(request: Request, ctx: Ctx, cell_id: CellId) -> dict[str, Any]:
    """One stored cell, with its latest verification (null: none)."""
    return (await ctx.run_io(ctx.cells.cell, str(cell_id), clinic_scope(request))).to_json()


@router.get("/cells/{cell_id}/crop", response_class=Response, responses={**PNG, **error_responses(404, 422)})
async def crop(request: Request, ctx: Ctx, cell_id: CellId) -> Response:
    """The cell's crop (PNG, at most 128 px a side), made when the cells were found."""
    png = await ctx.run_io(ctx.cells.crop, str(cell_id), clinic_scope(request))
    return Response(png, media_type="image/png", headers=IMAGE_CACHE)


@router.post("/cells/{cell_id}/verifications", status_code=201, response_model=CellVerificationOut,
             responses={**WRITE, **error_responses(404)})
async def verify_cell(
    request: Request, ctx: Ctx, cell_id: CellId,
    call: Annotated[VerifyAsClass | VerifyUnusable, Body(description="`label` (a class) or `unusable: true`")],
) -> dict[str, Any]:
    """Verify a cell's class (or mark it unusable), as a field is verified: appended, never overwriting; needs a
    logged-in user or a token (401); 404 for an unknown cell, 422 for a class the model does not have."""
    principal = require_user(request)
    return (await ctx.run_io(ctx.cells.record, str(cell_id), principal, call.label, call.comment)).to_json()


@router.get("/cells/{cell_id}/verifications", response_model=CellTrailOut,
            responses=error_responses(404, 422))
async def cell_verifications(request: Request, ctx: Ctx, cell_id: CellId) -> dict[str, Any]:
    """Every verification of one cell, oldest first (the last one is its verified class)."""
    items = await ctx.run_io(ctx.cells.trail, str(cell_id), clinic_scope(request))
    return {"items": [v.to_json() for v in items]}


@router.get("/worklist/cells", responses=error_responses(404, 422))
async def cell_worklist(
    request: Request, ctx: Ctx, limit: Annotated[int, Query(ge=1, le=MAX_WORKLIST)] = 50,
    after_id: Annotated[uuid.UUID | None, Query(description="continue after this cell (the last one of the "
                                                            "previous call)")] = None,
    after_flagged: Annotated[bool, Query(description="whether the `after_id` cell is flagged")] = True,
) -> dict[str, Any]:
    """Cells awaiting verification (found already: open a sample's gallery first), flagged first, then the
    rest, newest first within each; `total` counts them all."""
    found = await ctx.run_io(ctx.cells.worklist, limit, clinic_scope(request),
                             None if after_id is None else str(after_id), after_flagged)
    return {"items": [c.to_json() for c in found.items], "total": found.total}


@pages.get("/cells", response_class=HTMLResponse)
async def gallery_page(
    request: Request, ctx: Ctx,
    sample_id: Annotated[str, Query(max_length=SAMPLE_ID_MAX)] = "",
    cell: Annotated[str, Query(max_length=64, description="the cell to show in its field")] = "",
) -> Response:
    """A sample's cells grouped by class with counts; `cell` shows that cell outlined in its field."""
    gallery, selected, missing = None, None, ""
    if sample_id:
        try:
            gallery = await gallery_of(request, ctx, sample_id)
        except RequestRejected as exc:
            if exc.status_code != 404:
                raise
            missing = sample_id
    if gallery is not None and cell:
        selected = next((c for c in gallery.cells if c.id == cell), None)
    return ctx.templates.TemplateResponse(request, "cells.html", {
        "disclaimer": DISCLAIMER, "sample_id": sample_id, "gallery": gallery, "selected": selected,
        "missing": missing,
    })

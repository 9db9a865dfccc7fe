"""Server-rendered pages for verifying: the keyboard worklist (/verify) and the agreement page (/agreement).

The worklist page is a shell: static/verify.js reads the worklist from /api/v1/worklist (fields) or
/api/v1/worklist/cells (`?unit=cells`: cells, shown as their crop and their field with the cell outlined)
and posts each verification to the JSON API (same origin, so the Origin check and the SameSite=Strict cookie keep other
sites out, as for the upload form). No inline script: the classes travel in a data- attribute.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response

from leukoscope.serve.agreement import agreement_report
from leukoscope.serve.context import ServerContext, get_ctx
from leukoscope.serve.routes_pages import DISCLAIMER
from leukoscope.serve.security import clinic_scope, principal_of

router = APIRouter(include_in_schema=False)
Ctx = Annotated[ServerContext, Depends(get_ctx)]


@router.get("/verify", response_class=HTMLResponse)
async def verify_page(request: Request, ctx: Ctx,
                      unit: Annotated[str, Query(pattern="^(fields|cells)$")] = "fields") -> Response:
    """The worklist of fields (predictions) or of cells (found already, in a sample's gallery)."""
    principal = principal_of(request)
    has_users = await ctx.run_io(request.app.state.accounts.any_users)
    return ctx.templates.TemplateResponse(request, "verify.html", {
        "disclaimer": DISCLAIMER, "classes": await ctx.run_io(ctx.service.classes_for, clinic_scope(request)),
        "principal": principal,
        "can_login": bool(ctx.settings.token) or has_users, "unit": unit,
    })


@router.get("/agreement", response_class=HTMLResponse)
async def agreement_page(request: Request, ctx: Ctx) -> Response:
    clinic = clinic_scope(request)
    model = await ctx.run_io(ctx.service.model_for, clinic)
    reports = await ctx.run_io(agreement_report, ctx.store, model.classes, model.version, clinic=clinic)
    return ctx.templates.TemplateResponse(request, "agreement.html", {
        "disclaimer": DISCLAIMER, "reports": reports, "serving": model.version,
    })

"""Server-rendered pages: upload, history and login. The browser code is static/app.js (no inline script)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from leukoscope.serve.context import ServerContext, get_ctx
from leukoscope.serve.limits import ALLOWED_FORMATS
from leukoscope.serve.lockout import message as lockout_message
from leukoscope.serve.security import COOKIE_NAME, client_address, safe_next, session_id, token_matches
from leukoscope.serve.store import MAX_PAGE, Filters

# The same sentence as leukoscope.cli.common.DISCLAIMER; not imported, so the server never loads the CLI.
DISCLAIMER = "Research software, not a certified medical device: never use it alone for a diagnosis."
router = APIRouter(include_in_schema=False)
Ctx = Annotated[ServerContext, Depends(get_ctx)]


@router.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
async def index(request: Request, ctx: Ctx) -> Response:
    s = ctx.settings
    return ctx.templates.TemplateResponse(request, "index.html", {
        "disclaimer": DISCLAIMER, "classes": ctx.service.classes, "max_files": s.max_files,
        "max_file_bytes": s.max_file_bytes, "max_request_bytes": s.max_request_bytes,
        "formats": sorted(ALLOWED_FORMATS),
    })


@router.get("/history", response_class=HTMLResponse)
async def history(
    request: Request, ctx: Ctx,
    page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
    label: str = "",
    review: Annotated[str, Query(pattern="^(|yes|no)$")] = "",
    sample_id: Annotated[str, Query(max_length=64)] = "",
) -> Response:
    filters = Filters(label=label or None, review={"yes": True, "no": False}.get(review),
                      sample_id=sample_id or None)
    result = await ctx.run_io(ctx.store.page, page, ctx.settings.page_size, filters)
    labels = sorted(set(ctx.service.classes) | set(await ctx.run_io(ctx.store.labels)))
    query = {"label": label, "review": review, "sample_id": sample_id}
    api_query = {"label": label, "review": {"yes": "true", "no": "false"}.get(review, ""), "sample_id": sample_id}
    return ctx.templates.TemplateResponse(request, "history.html", {
        "disclaimer": DISCLAIMER, "page": result, "labels": labels, "query": query,
        "classes": ctx.service.classes, "csv_query": urlencode({k: v for k, v in api_query.items() if v}),
    })


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, ctx: Ctx, next: str = "/") -> Response:
    if not ctx.settings.token:
        return RedirectResponse(safe_next(next), status_code=303)
    return ctx.templates.TemplateResponse(request, "login.html", {
        "disclaimer": DISCLAIMER, "next": safe_next(next), "error": None,
    })


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, ctx: Ctx) -> Response:
    """Check the token typed into the form; on success set the session cookie and go on."""
    form = await request.form(max_files=0, max_fields=4, max_part_size=4096)
    token, target = str(form.get("token", "")), safe_next(str(form.get("next", "/")))
    if not ctx.settings.token:
        return RedirectResponse(target, status_code=303)
    correct = token_matches(token, ctx.settings.token)
    wait = request.app.state.lockout.attempt(client_address(request.scope), correct)
    if wait:
        return ctx.templates.TemplateResponse(request, "login.html", {
            "disclaimer": DISCLAIMER, "next": target, "error": lockout_message(wait),
        }, status_code=429, headers={"Retry-After": str(wait)})
    if not correct:
        return ctx.templates.TemplateResponse(request, "login.html", {
            "disclaimer": DISCLAIMER, "next": target, "error": "wrong token",
        }, status_code=401)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE_NAME, request.app.state.sessions.create(), httponly=True, samesite="strict",
                        max_age=int(ctx.settings.session_hours * 3600), path="/",
                        # HTTPS here, or at a TLS proxy in front (the page the form was sent from says so)
                        secure=request.url.scheme == "https" or request.headers.get("origin", "").startswith("https:"))
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """End the session on the server (the cookie's id stops working everywhere) and in this browser."""
    request.app.state.sessions.revoke(session_id(request.scope))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE_NAME, path="/")
    return response

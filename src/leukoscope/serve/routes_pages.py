"""Server-rendered pages: upload, history and login. The browser code is static/app.js (no inline script).

The login form takes a user's name and password, or the API token. Wrong tokens count against the client's
address as API guesses do; wrong passwords count per name and address, and each try is counted before the
password hash is checked, so parallel guesses cannot slip past the limit (lockout.py).
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from leukoscope.serve.context import ServerContext, get_ctx
from leukoscope.serve.limits import ALLOWED_FORMATS
from leukoscope.serve.lockout import message as lockout_message
from leukoscope.serve.lockout import password_key, password_message
from leukoscope.serve.security import (
    COOKIE_NAME,
    client_address,
    clinic_scope,
    safe_next,
    session_id,
    token_matches,
)
from leukoscope.serve.sessions import TOKEN_PRINCIPAL, Principal
from leukoscope.serve.store import MAX_PAGE, Filters
from leukoscope.serve.tokens import ApiTokens

# The same sentence as leukoscope.cli.common.DISCLAIMER; not imported, so the server never loads the CLI.
DISCLAIMER = "Research software, not a certified medical device: never use it alone for a diagnosis."
router = APIRouter(include_in_schema=False)
Ctx = Annotated[ServerContext, Depends(get_ctx)]


@router.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
async def index(request: Request, ctx: Ctx) -> Response:
    s = ctx.settings
    classes = await ctx.run_io(ctx.service.classes_for, clinic_scope(request))
    return ctx.templates.TemplateResponse(request, "index.html", {
        "disclaimer": DISCLAIMER, "classes": classes, "max_files": s.max_files,
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
    verified: Annotated[str, Query(pattern="^(|awaiting|verified|agrees|disagrees)$")] = "",
) -> Response:
    checked = {"awaiting": {"verified": False}, "verified": {"verified": True}, "agrees": {"disagrees": False},
               "disagrees": {"disagrees": True}}.get(verified, {})
    clinic = clinic_scope(request)
    filters = Filters(label=label or None, review={"yes": True, "no": False}.get(review),
                      sample_id=sample_id or None, clinic=clinic, **checked)
    result = await ctx.run_io(ctx.service.history, page, ctx.settings.page_size, filters)
    classes = await ctx.run_io(ctx.service.classes_for, clinic)
    labels = sorted(set(classes) | set(await ctx.run_io(ctx.store.labels, clinic)))
    query = {"label": label, "review": review, "sample_id": sample_id, "verified": verified}
    api_query = {"label": label, "review": {"yes": "true", "no": "false"}.get(review, ""), "sample_id": sample_id,
                 **{key: "true" if value else "false" for key, value in checked.items()}}
    return ctx.templates.TemplateResponse(request, "history.html", {
        "disclaimer": DISCLAIMER, "page": result, "labels": labels, "query": query,
        "classes": classes, "csv_query": urlencode({k: v for k, v in api_query.items() if v}),
    })


async def _login_page(request: Request, ctx: ServerContext, target: str, error: str | None = None,
                      status_code: int = 200, headers: dict[str, str] | None = None, name: str = "") -> Response:
    has_users = await ctx.run_io(request.app.state.accounts.any_users)
    return ctx.templates.TemplateResponse(request, "login.html", {
        "disclaimer": DISCLAIMER, "next": target, "error": error, "name": name,
        "token_login": bool(ctx.settings.token), "user_login": has_users,
    }, status_code=status_code, headers=headers)


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, ctx: Ctx, next: str = "/") -> Response:
    if not ctx.settings.token and not await ctx.run_io(request.app.state.accounts.any_users):
        return RedirectResponse(safe_next(next), status_code=303)  # nothing to log in to
    return await _login_page(request, ctx, safe_next(next))


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, ctx: Ctx) -> Response:
    """Check the name and password, or the token, typed into the form; on success set the session cookie."""
    form = await request.form(max_files=0, max_fields=5, max_part_size=4096)
    token, target = str(form.get("token", "")), safe_next(str(form.get("next", "/")))
    name, password = str(form.get("name", "")).strip()[:64], str(form.get("password", ""))
    if not ctx.settings.token and not await ctx.run_io(request.app.state.accounts.any_users):
        return RedirectResponse(target, status_code=303)
    lockout, address = request.app.state.lockout, client_address(request.scope)
    if token or not (name or password):  # the token form (an empty form is a wrong token)
        holder: Principal | None = None
        if ctx.settings.token and token_matches(token, ctx.settings.token):
            holder = TOKEN_PRINCIPAL
        elif token:  # a clinic's API token (serve/tokens.py)
            holder = await ctx.run_io(ApiTokens(ctx.store).principal, token[:512])
        wait = await ctx.run_io(lockout.attempt, address, holder is not None)
        if wait:
            return await _login_page(request, ctx, target, lockout_message(wait), 429, {"Retry-After": str(wait)})
        if holder is None:
            return await _login_page(request, ctx, target, "wrong token", 401)
        return await _session(request, ctx, holder, target)
    key = password_key(address, name)
    wait = await ctx.run_io(lockout.retry_after, key)
    if wait:
        return await _login_page(request, ctx, target, password_message(wait), 429, {"Retry-After": str(wait)}, name)
    await ctx.run_io(lockout.failed, key)  # counted before the (slow) hash check, so parallel guesses cannot pass the limit
    user, principal = await ctx.run_io(ctx.verifier.users.authenticate, name, password)
    if user is None:
        return await _login_page(request, ctx, target, "wrong name or password", 401, name=name)
    await ctx.run_io(lockout.succeeded, key)
    if principal is None:
        return await _login_page(request, ctx, target, f"{user.name} is disabled: ask an admin", 403, name=name)
    return await _session(request, ctx, principal, target)


async def _session(request: Request, ctx: ServerContext, principal: Principal, target: str) -> Response:
    session = await ctx.run_io(request.app.state.sessions.create, principal)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE_NAME, session, httponly=True, samesite="strict",
                        max_age=int(ctx.settings.session_hours * 3600), path="/",
                        # HTTPS here, or at a TLS proxy in front (the page the form was sent from says so)
                        secure=request.url.scheme == "https" or request.headers.get("origin", "").startswith("https:"))
    return response


@router.post("/logout")
async def logout(request: Request, ctx: Ctx) -> Response:
    """End the session on the server (the cookie's id stops working everywhere) and in this browser."""
    await ctx.run_io(request.app.state.sessions.revoke, session_id(request.scope))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE_NAME, path="/")
    return response

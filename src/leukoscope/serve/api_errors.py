"""One error shape for the whole API, declared in the OpenAPI schema and returned by every error path.

Every error body is `{"detail": "<one clear sentence>"}`; a 422 from request validation adds `errors`, the
list of offending fields (`loc`, `msg`, `type`; the input itself is not echoed). Other fields may appear
(`POST /predict` answering 422 keeps its per-file `results`), so the model allows extra properties.
FastAPI's default 422 schema (an array `detail`) is replaced, so what the schema says and what a client
gets agree, as a schema fuzzer (schemathesis, tests/serve/test_fuzz.py) checks.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount

CANDIDATE_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
DESCRIPTIONS = {
    400: "Bad request (for example a Host header this server does not answer to)",
    401: "Authentication required (a token is configured, users exist, or the route needs a named user)",
    403: "Refused: a cross-site request (Origin or Referer of another site), or a technologist on an admin route",
    404: "Not found",
    413: "Request too large (too many files, a file or the whole request over its limit)",
    415: "Not multipart/form-data",
    422: "Invalid parameters, or no uploaded file could be predicted",
    429: "Too many wrong tokens from this address (Retry-After says how long to wait)",
    500: "Internal server error (details in the server log)",
    503: "Server busy or model unavailable (Retry-After when busy)",
}


class FieldError(BaseModel):
    """One invalid request field."""

    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every error the API answers."""

    model_config = ConfigDict(extra="allow")
    detail: str
    errors: list[FieldError] | None = None


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route or router: these statuses answer an ErrorBody."""
    return {code: {"model": ErrorBody, "description": DESCRIPTIONS[code]} for code in codes}


def _field(error: dict[str, Any]) -> dict[str, Any]:
    return {"loc": [p if isinstance(p, int) else str(p) for p in error.get("loc", ())],
            "msg": str(error.get("msg", "")), "type": str(error.get("type", ""))}


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 for parameters that break the schema: one sentence plus the field list."""
    fields = [_field(e) for e in exc.errors()] if isinstance(exc, RequestValidationError) else []
    said = "; ".join(f"{'.'.join(str(p) for p in f['loc'][1:]) or f['loc'][0]}: {f['msg']}" for f in fields[:3])
    return JSONResponse({"detail": f"invalid request: {said or 'malformed parameters'}", "errors": fields},
                        status_code=422)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette's own 405 lists only the first route's).

    Asks each route whether it would take the request with another method (the routers' public `matches`,
    which also walks included routers); mounts (static files) answer for themselves.
    """
    routes = [route for route in request.app.router.routes if not isinstance(route, Mount)]
    return [method for method in CANDIDATE_METHODS
            if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)]


async def http_error(request: Request, exc: Exception) -> Any:
    """Starlette's HTTP errors (404 for unknown paths, 405) as ErrorBody, with a complete `Allow` on 405."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405 and (methods := allowed_methods(request)):
        exc = StarletteHTTPException(405, "method not allowed", headers={"Allow": ", ".join(methods)})
    return await http_exception_handler(request, exc)

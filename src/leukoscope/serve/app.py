"""The FastAPI application factory (FastAPI's "bigger applications" layout).

`create_app(settings, predictor=None)` wires routers, middleware and error handlers; the lifespan loads
the model once (unless a loaded predictor is injected, as tests and the CLI do), opens the store (SQLite
or PostgreSQL, migrated to this code's schema), binds the login sessions and lockouts to it, and starts
the bounded inference pool, all kept in `app.state.ctx`. `app_from_environment` is the same app built in
each process of `leukoscope serve --processes N` (uvicorn's workers), from settings the parent passes on.

Error policy: every error a client sees is JSON `{"detail": "<one clear sentence>"}` with a 4xx status
(5xx only for the server's own faults, whose details go to the server log, never to the client); the
shape is declared in the OpenAPI schema for every route (`api_errors.ErrorBody`). A database that goes away
while the server runs answers 503 with Retry-After (a connection-level error) or 500, never a hang: the
pool checks a connection before use, so service resumes by itself once the database is back.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from fastapi_offline import FastAPIOffline
from sqlalchemy.exc import DataError as SQLDataError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from leukoscope import __version__
from leukoscope.errors import ImageError, LeukoscopeError, ModelError, UsageError
from leukoscope.serve.api_errors import http_error, validation_error
from leukoscope.serve.cell_service import CellService, CellsFn
from leukoscope.serve.context import ServerContext
from leukoscope.serve.database import UNAVAILABLE_ANSWER, DatabaseUnavailable
from leukoscope.serve.hosts import OriginCheckMiddleware, TrustedHosts
from leukoscope.serve.limits import BodyLimitMiddleware, Gate, RequestRejected
from leukoscope.serve.lockout import Lockout
from leukoscope.serve.routes_api import router as api_router
from leukoscope.serve.routes_api import with_class_names
from leukoscope.serve.routes_cells import pages as cell_pages_router
from leukoscope.serve.routes_cells import router as cells_router
from leukoscope.serve.routes_models import router as models_router
from leukoscope.serve.routes_pages import router as pages_router
from leukoscope.serve.routes_review import router as review_pages_router
from leukoscope.serve.routes_verify import router as verify_router
from leukoscope.serve.security import DOCS_STATIC, SecurityHeadersMiddleware, TokenAuthMiddleware, principal_of
from leukoscope.serve.service import GradcamFn, PredictionService
from leukoscope.serve.sessions import SessionStore
from leukoscope.serve.settings import Settings
from leukoscope.serve.store import Store
from leukoscope.serve.users import Accounts
from leukoscope.serve.verify_service import VerificationService

log = logging.getLogger("leukoscope.serve")
HERE = Path(__file__).resolve().parent

DESCRIPTION = """\
Acute lymphoblastic leukemia detection and B-cell subtyping in blood smear images.
**Research software, not a medical device: never use it alone for a diagnosis.**

`POST /api/v1/predict` takes multipart `files` (one or many). Each file gets its own entry in `results`:
readable images are predicted and stored; a file that is not a readable image gets `ok: false` and an
`error`, and the request still answers 200 as long as one file was predicted (422 when none was).
Request limits (too many files, a file or the whole request too large) answer 413 for the whole request.
When the server is saturated it answers 503 with `Retry-After`.

Technologists verify the model's calls: `POST /api/v1/predictions/{id}/verifications` with `{"label": CLASS}`
or `{"unusable": true}` (and an optional `comment`) appends a verification, named after the logged-in user or
the token's holder; the latest one is the prediction's verified class, and every one stays in the audit
trail (`GET /api/v1/verifications`). Authentication: with `LEUKOSCOPE_API_TOKEN` set, any user created
(`leukoscope users add`) or any clinic token made (`leukoscope tokens create`), every route needs
`Authorization: Bearer <token>`, `X-API-Token` or a login session. The shared token acts as an admin of the
implicit clinic; technologists get 403 on the admin routes (`/api/v1/users`).

Clinics: every user and token belongs to one clinic and sees only its rows; ids in URLs are UUIDs, and
another clinic's prediction, sample or user answers 404 exactly like one that does not exist.
"""


ENV_SETTINGS = "LEUKOSCOPE_SERVE_SETTINGS"  # JSON settings for the processes of `serve --processes N`


def _load_predictor(settings: Settings) -> Any:
    from leukoscope.inference.predictor import load_predictor  # lazy: importing inference pulls in numpy/onnxruntime

    return load_predictor(settings.model, backend=settings.backend)


def _status_for(exc: LeukoscopeError) -> int:
    if isinstance(exc, RequestRejected):
        return exc.status_code
    if isinstance(exc, ImageError):
        return 422
    if isinstance(exc, ModelError):
        return 503
    if isinstance(exc, UsageError):
        return 400
    return 400


async def _leukoscope_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, DatabaseUnavailable):
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": UNAVAILABLE_ANSWER}, status_code=503, headers={"Retry-After": "2"})
    status = _status_for(exc) if isinstance(exc, LeukoscopeError) else 400
    headers = getattr(exc, "headers", None) or None
    return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)


async def _unstorable_value(request: Request, exc: Exception) -> JSONResponse:
    """A value the database refuses to store or compare (PostgreSQL: a NUL character in text)."""
    log.info("database refused a value on %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse({"detail": "a value in this request cannot be stored or searched for (a control character "
                                   "such as NUL?)"}, status_code=422)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal server error (details are in the server log)"}, status_code=500)


def _who(request: Request) -> dict[str, Any]:
    """Every page knows who is logged in (the header shows the name and a logout button)."""
    return {"principal": principal_of(request)}


def _package_loader(settings: Settings) -> Callable[[str], Any]:
    """How the server loads a clinic's own package (`clinics set-model`): as it loads its own."""
    def load(package: str) -> Any:
        from leukoscope.inference.predictor import load_predictor

        return load_predictor(package, backend=settings.backend)

    return load


def create_app(settings: Settings, predictor: Any | None = None, *, gradcam: GradcamFn | None = None,
               loader: Callable[[str], Any] | None = None, cells: CellsFn | None = None) -> FastAPI:
    """Build the app. `predictor` (already loaded), `gradcam` (overlay function) and `loader` (package folder
    -> predictor, for clinics' own packages) and `cells` ((predictor, [(name, bytes)]) -> field results) may be
    injected; otherwise the lifespan loads `settings.model`, and uses leukoscope.inference.explain.gradcam_overlay,
    leukoscope.inference.predictor.load_predictor and leukoscope.inference.cells.predict_cells_bytes."""
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = predictor if predictor is not None else await run_in_threadpool(_load_predictor, settings)
        store = await run_in_threadpool(Store(settings.database).open)
        executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="leukoscope-inference")
        templates = Jinja2Templates(directory=str(HERE / "templates"), context_processors=[_who])
        service = PredictionService(loaded, store, settings, gradcam, loader or _package_loader(settings))
        templates.env.globals.update(version=__version__, model_version=service.model_version)
        app.state.accounts.store = store
        app.state.sessions.bind(store)
        app.state.lockout.bind(store)
        verifier = VerificationService(store, service.classes_for, app.state.sessions)
        cell_service = CellService(store, service.model_for, cells, service.classes_for)
        app.state.ctx = ServerContext(settings, service, store, executor, Gate(settings.capacity), templates,
                                      verifier, cell_service)
        await run_in_threadpool(service.purge_expired_images, force=True)
        if settings.warmup:
            await run_in_threadpool(service.warm_up)
        log.info("leukoscope %s serving model %s, database %s (pid %d)", __version__, service.model_version,
                 settings.database_shown, os.getpid())
        try:
            yield
        finally:
            executor.shutdown(wait=True)
            store.close()

    app = FastAPIOffline(
        title="leukoscope", version=__version__, description=DESCRIPTION, lifespan=lifespan,
        docs_url="/docs", redoc_url=None, openapi_url="/openapi.json", static_url=DOCS_STATIC,
    )
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """The schema, with the loaded model's class names where a parameter takes one."""
        ctx = getattr(app.state, "ctx", None)
        if app.openapi_schema is None and ctx is not None:
            app.openapi_schema = with_class_names(default_openapi(), ctx.service.classes)
        return app.openapi_schema or default_openapi()

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_exception_handler(LeukoscopeError, _leukoscope_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(SQLDataError, _unstorable_value)
    app.add_exception_handler(Exception, _unexpected_error)
    # add_middleware: the last added runs first. Order on the way in:
    # headers -> trusted Host -> same-origin check -> auth -> body limit.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.state.lockout = Lockout()  # shared by the API credentials check and the login form (in the database)
    app.state.sessions = SessionStore(settings.session_hours * 3600)  # login cookies, revoked on logout (ditto)
    app.state.accounts = Accounts()  # the users table, for the auth middleware (bound to the store at start-up)
    app.add_middleware(TokenAuthMiddleware, token=settings.token, lockout=app.state.lockout,
                       sessions=app.state.sessions, accounts=app.state.accounts)
    app.add_middleware(OriginCheckMiddleware, allowed_hosts=settings.allowed_hosts)
    app.add_middleware(TrustedHosts, allowed_hosts=settings.trusted_hosts)
    app.add_middleware(SecurityHeadersMiddleware)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.include_router(api_router, prefix="/api/v1")
    app.include_router(verify_router, prefix="/api/v1")
    app.include_router(cells_router, prefix="/api/v1")
    app.include_router(models_router, prefix="/api/v1")
    app.include_router(pages_router)
    app.include_router(review_pages_router)
    app.include_router(cell_pages_router)
    return app


def app_from_environment() -> FastAPI:
    """The app of one process of `leukoscope serve --processes N`: uvicorn's workers import this factory,
    each loads the model itself; the settings come from the parent in LEUKOSCOPE_SERVE_SETTINGS (JSON)."""
    raw = os.environ.get(ENV_SETTINGS)
    if not raw:
        raise UsageError(f"{ENV_SETTINGS} is not set: start the server with `leukoscope serve`")
    return create_app(Settings.model_validate_json(raw))

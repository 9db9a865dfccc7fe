"""`leukoscope serve`: the web app and JSON API over one model, with uvicorn.

The model is loaded and the database opened (and migrated) here, before the server starts, so a missing
or damaged package, an unreachable database or one written by a newer leukoscope is one clear line and exit
code 1 instead of a traceback from inside the server's start-up. `--processes N` runs N server processes
(uvicorn's workers, one port), each loading the model and sharing the database (sessions and lockouts
included). `leukoscope db upgrade` migrates a database without serving it.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from leukoscope.cli.common import DISCLAIMER, console
from leukoscope.errors import UsageError

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's
DB_HELP = ("The web app's database: a SQLite file, or postgresql://USER[:PASSWORD]@HOST[:PORT]/NAME (default: "
           "$LEUKOSCOPE_DB_URL, else $LEUKOSCOPE_DB, else ./leukoscope-data/leukoscope.db).")


def serve_command(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on. Anything but loopback needs "
                             "LEUKOSCOPE_API_TOKEN set or users in the database (or --insecure)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model package folder, run folder or "
                                     "checkpoint (default: the bundled package)."),
    models_dir: Path | None = typer.Option(None, "--models-dir", help="A folder of model packages (one per "
                                           "subfolder, e.g. made by `leukoscope adapt`) that each clinic's admin "
                                           "may choose from in the web app (default: only --model)."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    workers: int = typer.Option(1, "--workers", min=1, help="Inference threads per process (requests predicted "
                                "at once)."),
    processes: int = typer.Option(1, "--processes", min=1, max=64, help="Server processes on the one port "
                                  "(uvicorn workers; each loads the model). They share the database: SQLite on "
                                  "one machine's local disk, or PostgreSQL."),
    queue: int = typer.Option(16, "--queue", min=0, help="Requests that may wait for a worker; beyond "
                              "workers + queue the server answers 503 with Retry-After."),
    backend: str = typer.Option("auto", "--backend", help="auto, onnx or torch."),
    max_files: int = typer.Option(32, "--max-files", min=1, help="Files per request."),
    max_file_mb: float = typer.Option(20.0, "--max-file-mb", min=0.01, help="Size of one file, MiB."),
    max_request_mb: float = typer.Option(100.0, "--max-request-mb", min=0.01, help="Size of one request, MiB."),
    tta: bool = typer.Option(False, "--tta", help="8-fold test-time augmentation (8x slower)."),
    keep_images_days: float | None = typer.Option(None, "--keep-images-days", min=0.001, help="Delete uploaded "
                                                  "images after this many days; their predictions stay "
                                                  "(default: keep images)."),
    insecure: bool = typer.Option(False, "--insecure", help="Allow a non-loopback --host without a token."),
    allowed_host: list[str] | None = typer.Option(None, "--allowed-host", help="A name clients use to reach the "
                                                  "server (repeatable; '*.example.org' patterns; default: "
                                                  "$LEUKOSCOPE_ALLOWED_HOSTS, comma-separated). Loopback names "
                                                  "and --host are always accepted; any other Host gets 400."),
    session_hours: float = typer.Option(12.0, "--session-hours", min=0.01, help="Hours a login from the web "
                                        "page lasts (logout ends it at once)."),
    warmup: bool = typer.Option(True, "--warmup/--no-warmup", help="Run one prediction and one Grad-CAM at "
                                "start-up so the first request is fast (a few seconds longer to start)."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level (debug, info, warning)."),
) -> None:
    """Serve the upload page, the prediction history, the verify worklist and the JSON API (/api/v1, docs at /docs).

    Every prediction is stored in the database (SQLite, or PostgreSQL with --db postgresql://...) before it is
    answered. With users in the database (`leukoscope users add`) or LEUKOSCOPE_API_TOKEN set, every page
    needs a login. Research software, not a medical device.
    """
    from leukoscope.serve import Settings, check_exposure, create_app
    from leukoscope.serve.service import model_version
    from leukoscope.serve.settings import MIB

    _check_options(host=host, port=port, max_file_mb=max_file_mb, max_request_mb=max_request_mb, log_level=log_level)
    settings = Settings.from_env(
        host=host, port=port, model=model, db=db, workers=workers, queue=queue, insecure=insecure,
        max_files=max_files, max_file_bytes=int(max_file_mb * MIB), max_request_bytes=int(max_request_mb * MIB),
        tta=tta, keep_images_days=keep_images_days, warmup=warmup, allowed_hosts=allowed_host or None,
        session_hours=session_hours, processes=processes, backend=backend,
        models_dir=None if models_dir is None else str(models_dir.resolve()),
    )
    if models_dir is not None and not models_dir.is_dir():
        raise UsageError(f"--models-dir {models_dir} is not a folder")
    from leukoscope.serve.users import users_exist

    check_exposure(settings, has_users=users_exist(settings.database))  # before the (slow) model load
    from leukoscope.serve.store import Store
    from leukoscope.serve.users import Users

    _refuse_cell_model(settings.model)
    with Store(settings.database) as store:  # create / migrate the database now: a bad --db is one clear line
        users = Users(store).count()
        tokens = int(store.scalar("SELECT COUNT(*) FROM api_tokens WHERE revoked_at IS NULL"))
        clinics = int(store.scalar("SELECT COUNT(*) FROM clinics WHERE deleted_at IS NULL"))

    import uvicorn

    from leukoscope.inference.predictor import load_predictor

    predictor = load_predictor(settings.model, backend=backend)
    app = create_app(settings, predictor)
    auth = ("token required" if settings.token else "no authentication") if not (users or tokens) else (
        f"login required ({users} user{'s' if users != 1 else ''}{' or the token' if settings.token else ''}"
        f"{f', {tokens} clinic token(s)' if tokens else ''})")
    if clinics > 1:
        auth += f"; {clinics} clinics"
    many = f"; {settings.processes} processes" if settings.processes > 1 else ""
    console.print(f"leukoscope serving on [bold]{settings.url}[/] ({auth}; model {model_version(predictor.info)} "
                  f"on {predictor.backend}{_model_file(predictor)}; database {escape(settings.database_shown)}"
                  f"{many}). Ctrl-C to stop.", highlight=False, soft_wrap=True)
    console.print(DISCLAIMER, highlight=False, soft_wrap=True)
    if settings.host in ("0.0.0.0", "::") and not settings.allowed_hosts:
        console.print("Answering only Host names " + ", ".join(settings.trusted_hosts) + ": add the names clients "
                      "use with --allowed-host.", highlight=False, soft_wrap=True)
    options = {"host": settings.host, "port": settings.port, "log_level": log_level, "server_header": False,
               "proxy_headers": False, "timeout_graceful_shutdown": 10}
    if settings.processes == 1:
        uvicorn.run(app, **options)
        return
    import os

    from leukoscope.serve.app import ENV_SETTINGS

    del app, predictor  # each process loads its own; this one only watches them
    os.environ[ENV_SETTINGS] = settings.model_dump_json()  # inherited by the workers only (token included)
    uvicorn.run("leukoscope.serve.app:app_from_environment", factory=True, workers=settings.processes, **options)


db_app = typer.Typer(help="The web app's database: bring its schema up to date.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(db: str | None = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Migrate the database to this leukoscope's schema (the server does this at start-up too); refuses a
    database written by a newer leukoscope. Safe to run while servers run, and again."""
    from leukoscope.serve.settings import database_from_env
    from leukoscope.serve.store import Store

    with Store(database_from_env(db)) as store:
        version = store.version
    console.print(f"database {escape(store.where)} is at schema version {version}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add `serve` and `db` to the leukoscope app."""
    app.command("serve")(serve_command)
    app.add_typer(db_app, name="db")


def _check_options(*, host: str, port: int, max_file_mb: float, max_request_mb: float, log_level: str) -> None:
    """What click's ranges let through but uvicorn would fail on after start-up (a traceback, or log lines
    after "serving on"): infinite sizes, an unknown log level, a --host that names no address."""
    import math
    import socket

    for option, value in (("--max-file-mb", max_file_mb), ("--max-request-mb", max_request_mb)):
        if not math.isfinite(value):
            raise UsageError(f"{option} must be a finite number of MiB, got {value}")
    if log_level.lower() not in LOG_LEVELS:
        raise UsageError(f"unknown --log-level {log_level!r}; choose from {', '.join(LOG_LEVELS)}")
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise UsageError(f"--host {host!r} is not an address to listen on: {reason}") from None


def _refuse_cell_model(model: object) -> None:
    """The web app predicts whole fields: a cell package (model.json `unit: cells`) would score crops' network
    on fields, so it is refused before anything starts (cells are read with `leukoscope predict --cells`)."""
    from leukoscope.inference.package import UNIT_CELLS, unit_of_model

    if model is not None and unit_of_model(str(model)) == UNIT_CELLS:
        raise UsageError(f"{model} is a cell model (it classifies cell crops): the web app needs a field model; "
                         "read cells with `leukoscope predict --cells`")


def _model_file(predictor: object) -> str:
    """" (model.int8.onnx)" when known: after the load-time int8 check, which file really answers matters."""
    name = getattr(predictor, "onnx_file", None)
    return f" ({name})" if name else ""

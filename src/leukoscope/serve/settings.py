"""Server settings: one frozen pydantic model built from CLI options and environment variables.

Everything the web app needs to know comes from here, so tests build a `Settings` directly and the CLI
builds one from its options; no module reads the environment on its own. pydantic checks types and
ranges; a bad value is one `UsageError` line naming the setting and the value (never the token's).
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from leukoscope.data.imaging import MAX_PIXELS
from leukoscope.errors import UsageError

ENV_TOKEN = "LEUKOSCOPE_API_TOKEN"
ENV_DB = "LEUKOSCOPE_DB"
ENV_DB_URL = "LEUKOSCOPE_DB_URL"  # postgresql://USER[:PASSWORD]@HOST[:PORT]/NAME (wins over LEUKOSCOPE_DB)
ENV_ALLOWED_HOSTS = "LEUKOSCOPE_ALLOWED_HOSTS"  # comma-separated, added to the loopback names
MIN_TOKEN_LENGTH = 16  # a shorter shared token could be guessed; refused at start-up
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
DEFAULT_DB = Path("leukoscope-data") / "leukoscope.db"
MIB = 1024 * 1024
SECRET_FIELDS = frozenset({"token", "db_url"})  # their values never appear in an error message


class Settings(BaseModel):
    """How the server runs. Sizes are in bytes; `workers` is the number of inference threads.

    `workers` threads predict at the same time and `queue` more requests may wait for one; beyond
    `workers + queue` requests in flight the server answers 503 with Retry-After rather than queueing
    without bound (a browser retrying later is better than every client timing out together).
    An invalid value raises UsageError (one line), not pydantic's ValidationError.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    model: str | None = None  # model package / run folder; None = the bundled package
    models_dir: str | None = None  # packages a clinic's admin may choose in the web app (one folder each)
    db: Path = DEFAULT_DB
    db_url: str | None = Field(None, repr=False)  # a database server (PostgreSQL) instead of the SQLite file `db`
    workers: int = Field(1, ge=1)
    processes: int = Field(1, ge=1, le=64)  # server processes (uvicorn workers), each with `workers` threads
    backend: str = "auto"  # what each process loads the model with (auto, onnx or torch)
    queue: int = Field(16, ge=0)
    token: str | None = Field(None, repr=False)  # never printed or logged
    insecure: bool = False
    max_file_bytes: int = Field(20 * MIB, ge=1)
    max_files: int = Field(32, ge=1)
    max_request_bytes: int = Field(100 * MIB, ge=1)
    max_pixels: int = Field(MAX_PIXELS, ge=1)
    tta: bool = False
    page_size: int = Field(50, ge=1)
    retry_after_s: int = Field(2, ge=0)
    # None: keep uploaded images; else purge after this many days. At most a century: 1e300 overflowed the
    # date arithmetic of the purge at start-up (a traceback from inside the server).
    keep_images_days: float | None = Field(None, gt=0, le=36500)
    allowed_hosts: tuple[str, ...] = ()  # Host names accepted besides loopback and the bound host ("*": any)
    session_hours: float = Field(12.0, gt=0)  # a login cookie stops working after this long
    warmup: bool = True  # one prediction and one Grad-CAM at start-up, so the first click is not slow

    def __init__(self, **values: Any) -> None:
        if isinstance(values.get("db"), str) and "://" in values["db"]:  # --db postgresql://...
            values["db_url"] = values.pop("db")
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise UsageError(describe(exc)) from None

    @field_validator("model", mode="before")
    @classmethod
    def _model_path(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("db", mode="before")
    @classmethod
    def _expand_db(cls, value: Any) -> Any:
        return Path(value).expanduser() if isinstance(value, str | os.PathLike) else value

    @field_validator("db_url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value is not None:
            from leukoscope.serve.database import database_url

            database_url(value)  # UsageError (one line, no password) for a URL we cannot use
        return value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _host_list(cls, value: Any) -> Any:
        """A comma-separated string (the environment variable) or a list; blanks dropped, names stripped."""
        items = value.split(",") if isinstance(value, str) else value
        if isinstance(items, list | tuple):
            return tuple(h.strip() if isinstance(h, str) else h for h in items if not isinstance(h, str) or h.strip())
        return items

    @field_validator("token")
    @classmethod
    def _long_token(cls, value: str | None) -> str | None:
        if value is not None and len(value) < MIN_TOKEN_LENGTH:
            raise PydanticCustomError("token_too_short", (
                f"{ENV_TOKEN} is too short ({len(value)} characters; at least {MIN_TOKEN_LENGTH}): make one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(24))'"))
        return value

    @property
    def database(self) -> str | Path:
        """What the store opens: the database URL when one is set, else the SQLite file."""
        return self.db_url or self.db

    @property
    def database_shown(self) -> str:
        """The database as it may be printed or logged (a URL's password masked)."""
        from leukoscope.serve.database import database_url, display

        return display(database_url(self.database))

    @property
    def data_dir(self) -> Path:
        """The folder holding the database (and its WAL files)."""
        return self.db.parent

    @property
    def capacity(self) -> int:
        """Requests allowed in flight (running + waiting) before the server answers 503."""
        return self.workers + self.queue

    @property
    def trusted_hosts(self) -> list[str]:
        """Host header values the server answers (DNS-rebinding defence): loopback names, the bound host
        unless it is a wildcard address, and `allowed_hosts`."""
        names = [*LOOPBACK_NAMES, *self.allowed_hosts]
        if self.host not in ("0.0.0.0", "::", ""):
            names.append(self.host)
        # Starlette compares the Host header's name with IPv6 literals in brackets, as URLs write them.
        return list(dict.fromkeys(f"[{n}]" if ":" in n and not n.startswith("[") else n.lower() for n in names))

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def with_(self, **changes: Any) -> Settings:
        """A copy with `changes`, checked like a new Settings."""
        return type(self)(**{**{name: getattr(self, name) for name in type(self).model_fields}, **changes})

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **options: Any) -> Settings:
        """Settings from explicit options, then LEUKOSCOPE_API_TOKEN / LEUKOSCOPE_DB_URL / LEUKOSCOPE_DB /
        LEUKOSCOPE_ALLOWED_HOSTS, then defaults (an explicit --db wins over both database variables).

        Options passed as None are treated as "not given" so CLI defaults can stay None.
        """
        env = dict(os.environ if env is None else env)
        given = {key: value for key, value in options.items() if value is not None}
        for name, variable in (("token", ENV_TOKEN), ("allowed_hosts", ENV_ALLOWED_HOSTS)):
            if name not in given and env.get(variable):
                given[name] = env[variable]
        if "db" not in given and "db_url" not in given:
            if env.get(ENV_DB_URL):
                given["db_url"] = env[ENV_DB_URL]
            elif env.get(ENV_DB):
                given["db"] = env[ENV_DB]
        return cls(**given)


def database_from_env(db: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> str | Path:
    """The database a command uses: --db, else LEUKOSCOPE_DB_URL, else LEUKOSCOPE_DB, else the default file
    (a URL as text, a file as a Path), without reading any other setting."""
    env = dict(os.environ if env is None else env)
    value = db if db not in (None, "") else env.get(ENV_DB_URL) or env.get(ENV_DB) or DEFAULT_DB
    text = os.fspath(value)
    return text if "://" in text else Path(text).expanduser()


def describe(exc: ValidationError) -> str:
    """pydantic's errors as one line: `workers must be at least 1 (got 0); port must be between ...`."""
    return "; ".join(_describe_one(error) for error in exc.errors(include_url=False))


def _describe_one(error: Any) -> str:
    name = ".".join(str(part) for part in error["loc"]) or "settings"
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "token_too_short":
        return error["msg"]  # already a sentence, and it must not repeat the token
    if kind == "extra_forbidden":
        return f"unknown setting {name!r}"
    field = Settings.model_fields.get(name)
    limits = {key: getattr(m, key) for m in (field.metadata if field else ()) for key in ("ge", "le", "gt", "lt")
              if hasattr(m, key)}
    if kind in ("greater_than_equal", "less_than_equal") and {"ge", "le"} <= limits.keys():
        phrase = f"must be between {limits['ge']:g} and {limits['le']:g}"
    elif kind == "greater_than_equal":
        phrase = "must be 0 or more" if ctx["ge"] == 0 else f"must be at least {ctx['ge']:g}"
    elif kind == "greater_than":
        phrase = f"must be more than {ctx['gt']:g}"
    elif kind == "less_than_equal":
        phrase = f"must be at most {ctx['le']:g}"
    else:  # a type error: pydantic's own words ("Input should be a valid integer, ...")
        msg = str(error["msg"])
        phrase = "must be " + msg[len("Input should be "):] if msg.startswith("Input should be ") else msg
    if name in SECRET_FIELDS:
        return f"{name} {phrase}"
    value = error.get("input")
    shown = repr(value) if isinstance(value, str) else str(value)
    return f"{name} {phrase} (got {shown[:80]})"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: addresses no other machine can reach."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings, *, has_users: bool = False) -> None:
    """Refuse to serve an unauthenticated app beyond this machine unless `insecure` says so on purpose.

    Uploaded smear images may be patient data: an open port on a lab network should be a decision, not
    an accident of typing `--host 0.0.0.0`. A database with users (`leukoscope users add`) is not open:
    every route then needs a login (users are never deleted, only disabled).
    """
    if is_loopback(settings.host) or settings.token or settings.insecure or has_users:
        return
    raise UsageError(
        f"refusing to listen on {settings.host} without authentication: set {ENV_TOKEN} "
        "to require a token, add users (leukoscope users add NAME --role admin), bind 127.0.0.1, or pass "
        "--insecure to accept the risk"
    )

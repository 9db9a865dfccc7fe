"""Server settings: one frozen dataclass built from CLI options and environment variables.

Everything the web app needs to know comes from here, so tests build a `Settings` directly and the CLI
builds one from its options; no module reads the environment on its own.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from leukoscope.data.imaging import MAX_PIXELS
from leukoscope.errors import UsageError

ENV_TOKEN = "LEUKOSCOPE_API_TOKEN"
ENV_DB = "LEUKOSCOPE_DB"
ENV_ALLOWED_HOSTS = "LEUKOSCOPE_ALLOWED_HOSTS"  # comma-separated, added to the loopback names
MIN_TOKEN_LENGTH = 16  # a shorter shared token could be guessed; refused at start-up
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
DEFAULT_DB = Path("leukoscope-data") / "leukoscope.db"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """How the server runs. Sizes are in bytes; `workers` is the number of inference threads.

    `workers` threads predict at the same time and `queue` more requests may wait for one; beyond
    `workers + queue` requests in flight the server answers 503 with Retry-After rather than queueing
    without bound (a browser retrying later is better than every client timing out together).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    model: str | None = None  # model package / run folder; None = the bundled package
    db: Path = DEFAULT_DB
    workers: int = 1
    queue: int = 16
    token: str | None = field(default=None, repr=False)  # never printed or logged
    insecure: bool = False
    max_file_bytes: int = 20 * MIB
    max_files: int = 32
    max_request_bytes: int = 100 * MIB
    max_pixels: int = MAX_PIXELS
    tta: bool = False
    page_size: int = 50
    retry_after_s: int = 2
    keep_images_days: float | None = None  # None: keep uploaded images; else purge them after this many days
    allowed_hosts: tuple[str, ...] = ()  # Host names accepted besides loopback and the bound host ("*": any)
    session_hours: float = 12.0  # a login cookie stops working after this long
    warmup: bool = True  # one prediction and one Grad-CAM at start-up, so the first click is not slow

    def __post_init__(self) -> None:
        checks = {
            "workers": self.workers, "max_file_bytes": self.max_file_bytes, "max_files": self.max_files,
            "max_request_bytes": self.max_request_bytes, "max_pixels": self.max_pixels,
            "page_size": self.page_size,
        }
        for name, value in checks.items():
            if value < 1:
                raise UsageError(f"{name} must be at least 1 (got {value})")
        if self.keep_images_days is not None and not self.keep_images_days > 0:
            raise UsageError(f"keep_images_days must be more than 0 (got {self.keep_images_days})")
        if self.queue < 0:
            raise UsageError(f"queue must be 0 or more (got {self.queue})")
        if not self.session_hours > 0:
            raise UsageError(f"session_hours must be more than 0 (got {self.session_hours})")
        if self.token is not None and len(self.token) < MIN_TOKEN_LENGTH:
            raise UsageError(
                f"{ENV_TOKEN} is too short ({len(self.token)} characters; at least {MIN_TOKEN_LENGTH}): make one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(24))'"
            )
        if not 0 <= self.port <= 65535:
            raise UsageError(f"port must be between 0 and 65535 (got {self.port})")

    @property
    def data_dir(self) -> Path:
        """The folder holding the database (and its WAL files)."""
        return Path(self.db).parent

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
        return replace(self, **changes)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **options: Any) -> Settings:
        """Settings from explicit options, then LEUKOSCOPE_API_TOKEN / LEUKOSCOPE_DB / LEUKOSCOPE_ALLOWED_HOSTS,
        then defaults.

        Options passed as None are treated as "not given" so CLI defaults can stay None.
        """
        env = dict(os.environ if env is None else env)
        given = {key: value for key, value in options.items() if value is not None}
        if "token" not in given and env.get(ENV_TOKEN):
            given["token"] = env[ENV_TOKEN]
        if "allowed_hosts" not in given and env.get(ENV_ALLOWED_HOSTS):
            given["allowed_hosts"] = env[ENV_ALLOWED_HOSTS].split(",")
        if "allowed_hosts" in given:
            given["allowed_hosts"] = tuple(h.strip() for h in given["allowed_hosts"] if h.strip())
        if "db" not in given and env.get(ENV_DB):
            given["db"] = Path(env[ENV_DB])
        if "db" in given:
            given["db"] = Path(given["db"]).expanduser()
        return cls(**given)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: addresses no other machine can reach."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """Refuse to serve an unauthenticated app beyond this machine unless `insecure` says so on purpose.

    Uploaded smear images may be patient data: an open port on a lab network should be a decision, not
    an accident of typing `--host 0.0.0.0`.
    """
    if is_loopback(settings.host) or settings.token or settings.insecure:
        return
    raise UsageError(
        f"refusing to listen on {settings.host} without authentication: set {ENV_TOKEN} "
        "to require a token, bind 127.0.0.1, or pass --insecure to accept the risk"
    )

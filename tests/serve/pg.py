"""A throwaway PostgreSQL cluster for the tests: initdb + pg_ctl in a temporary folder, on a free port.

PostgreSQL refuses to run as root, so when the tests run as root the cluster's folder is given to the
`nobody` user and every PostgreSQL command runs as it (runuser). The binaries are looked up on PATH and in
Debian's /usr/lib/postgresql/*/bin (`make test` installs them: scripts/ensure_postgres.sh); where none can
be found or run, `PostgresCluster.start` raises `Unavailable` with the reason the tests skip with.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.serve.servers import free_port

START_TIMEOUT_S = 60
RUN_AS = "nobody"


class Unavailable(RuntimeError):
    """No PostgreSQL here (the reason says why)."""


def find_bin_dir() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres, or None."""
    candidates = [Path(p).parent for p in (shutil.which("pg_ctl"),) if p]
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for folder in candidates:
        folder = folder.resolve()
        if all((folder / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


class PostgresCluster:
    """`with PostgresCluster() as pg: pg.url` -> postgresql+psycopg://postgres@127.0.0.1:PORT/postgres."""

    def __init__(self) -> None:
        self.bin = find_bin_dir()
        self.port = free_port()
        self.folder: Path | None = None
        self.as_user: list[str] = []

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = START_TIMEOUT_S) -> subprocess.CompletedProcess:
        assert self.bin is not None
        command = [*self.as_user, str(self.bin / args[0]), *args[1:]]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False,
                              env={**os.environ, "LC_ALL": "C", "TZ": "UTC"})

    def start(self) -> PostgresCluster:
        if self.bin is None:
            raise Unavailable("PostgreSQL binaries (initdb, pg_ctl) not found: run scripts/ensure_postgres.sh "
                              "(Debian's postgresql package) or put them on PATH")
        self.folder = Path(tempfile.mkdtemp(prefix="leukoscope-pg-"))
        if os.geteuid() == 0:
            if not shutil.which("runuser"):
                raise Unavailable("running as root without runuser: PostgreSQL cannot be started as another user")
            user = pwd.getpwnam(RUN_AS)
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            self.folder.chmod(0o700)
            self.as_user = ["runuser", "-u", RUN_AS, "--"]
        data = self.folder / "data"
        done = self._run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8",
                         "--locale=C")
        if done.returncode != 0:
            self.stop()
            raise Unavailable(f"initdb failed: {(done.stderr or done.stdout).strip()[-300:]}")
        done = self._run("pg_ctl", "-D", str(data), "-o", self._options(), "-l", str(self.folder / "log"), "-w",
                         "-t", str(START_TIMEOUT_S), "start")
        if done.returncode != 0:
            log = (self.folder / "log").read_text(errors="replace")[-500:] if (self.folder / "log").exists() else ""
            self.stop()
            raise Unavailable(f"pg_ctl start failed: {(done.stderr or done.stdout).strip()[-300:]} {log}")
        return self

    def _options(self) -> str:
        # fsync off: a test cluster need not survive the machine's crash, only the server's (stop -m immediate)
        return (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c full_page_writes=off -c max_connections=200")

    def restart(self, *, down_s: float = 0.0) -> None:
        """Stop the server at once (clients' connections break), wait `down_s`, and start it again."""
        self.stop_server()
        time.sleep(down_s)
        self.start_server()

    def stop_server(self) -> None:
        assert self.folder is not None
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop")

    def start_server(self) -> None:
        assert self.folder is not None
        done = self._run("pg_ctl", "-D", str(self.folder / "data"), "-o", self._options(), "-l", str(self.folder / "log"),
                         "-w", "start")
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()[-300:]}")

    def stop(self) -> None:
        if self.folder is None:
            return
        if (self.folder / "data" / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop", timeout=30)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def schema_url(base: str, schema: str) -> str:
    """`base` with every connection's search_path set to `schema` (one test's private namespace)."""
    return f"{base}?options=-csearch_path%3D{schema}"

"""Real server processes for tests: a uvicorn subprocess on a free loopback port, killed at the end."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
FAKE_SERVER = "tests.serve.fake_server"  # run as a module from the repository root (cwd=REPO)
START_TIMEOUT_S = 120.0  # a bound on waiting, not a timing assertion (the machine is shared)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """`with ServerProcess(db, model=...) as server:` starts a server and waits until /health answers.

    cli=True runs the real `leukoscope serve` command (needs a real model package); otherwise
    tests/serve/fake_server.py (the fake predictor, or a real package given as `model`).
    """

    def __init__(self, db: Path | str, log: Path, *, model: Path | None = None, cli: bool = False,
                 token: str | None = None, extra: list[str] | None = None) -> None:
        self.db, self.log_path, self.model, self.cli, self.token = db, log, model, cli, token
        self.extra = extra or []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        if self.cli:
            assert self.model is not None, "the CLI needs a model package"
            return [sys.executable, "-m", "leukoscope", "serve", "--port", str(self.port), "--db", str(self.db),
                    "--model", str(self.model), "--log-level", "warning", *self.extra]
        command = [sys.executable, "-m", FAKE_SERVER, "--port", str(self.port), "--db", str(self.db), *self.extra]
        if self.model is not None:
            command += ["--model", str(self.model)]
        if self.token:
            command += ["--token", self.token]
        return command

    def start(self) -> ServerProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        env.pop("LEUKOSCOPE_API_TOKEN", None)
        if self.token:
            env["LEUKOSCOPE_API_TOKEN"] = self.token
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(self.command(), cwd=REPO, env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT)
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        headers = {"X-API-Token": self.token} if self.token else {}
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                status = httpx.get(f"{self.url}/api/v1/health", headers=headers, timeout=2).status_code
                if status == 200 or (status == 401 and not self.token):  # 401: up, with users to log in
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not answer within {START_TIMEOUT_S:.0f} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        """SIGKILL: no shutdown handler, no flush, no chance to clean up (the crash case)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill9()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

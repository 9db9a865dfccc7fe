"""Load test of `leukoscope serve`: throughput, latency percentiles, errors, and one DB row per answer.

Starts its own server (a subprocess of `python -m leukoscope serve`) on a free port of 127.0.0.1 — never
anything but loopback — with a fresh database in a temporary folder (or `--db`, e.g. a postgresql:// URL),
then sends `--requests` single-image prediction requests from `--concurrency` concurrent clients (httpx
async, benchmarks.netload's client, as network_load.py uses). It is bounded in count and time
(`--max-seconds`). It reports throughput, p50/p95/p99 latency, the error count (which must be 0;
deliberate 503 "busy" answers are counted apart), and checks that the database holds exactly one row per
accepted request (the run's requests carry its own file-name prefix, and their rows are counted through the
app's Store, so on SQLite and PostgreSQL alike). Prints a markdown table row; `--out results.json` also
writes the numbers as JSON.

    python -m benchmarks.load_server                      # bundled model, 2000 requests, 16 clients
    python -m benchmarks.load_server --model runs/x/package --requests 2000 --concurrency 16 --out r.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from benchmarks import netload

HOST = "127.0.0.1"  # loopback only, by design
WARMUP = 8


@dataclass
class Result:
    date: str
    model: str
    backend: str
    requests: int
    concurrency: int
    workers: int
    queue: int
    image_size: int
    sent: int
    accepted: int
    busy_503: int
    errors: int
    seconds: float
    throughput_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    db_rows: int
    db_ok: bool
    cpu: str

    HEADER = ("| date | model | backend | requests | clients | workers | accepted | 503 | errors | req/s | "
              "p50 ms | p95 ms | p99 ms | DB rows = accepted |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")

    def row(self) -> str:
        return (f"| {self.date[:10]} | {self.model} | {self.backend} | {self.sent} | {self.concurrency} | "
                f"{self.workers} | {self.accepted} | {self.busy_503} | {self.errors} | {self.throughput_rps:.1f} | "
                f"{self.p50_ms:.1f} | {self.p95_ms:.1f} | {self.p99_ms:.1f} | {'yes' if self.db_ok else 'NO'} |")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def synthetic_images(count: int, size: int) -> list[bytes]:
    """Distinct smear-coloured JPEGs (content does not matter for speed; decoding and size do)."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        base = np.array([225, 190, 205]) + rng.integers(-20, 20, size=3)
        pixels = np.clip(base + rng.normal(0, 25, size=(size, size, 3)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


def folder_images(folder: Path, count: int) -> list[bytes]:
    suffixes = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes)[:count]
    if not paths:
        raise SystemExit(f"no images found under {folder}")
    return [p.read_bytes() for p in paths]


class Server:
    """`python -m leukoscope serve` on a loopback port (free unless given) with a database: by default a fresh
    SQLite file in `workdir`, or `db` (a path or a postgresql:// URL). `token`, when given, becomes the
    server's LEUKOSCOPE_API_TOKEN; the readiness probe sends `probe_token` (e.g. a clinic's token the database
    already holds), else `token`. `extra`: more `serve` options."""

    def __init__(self, args: argparse.Namespace, workdir: Path, *, db: str | Path | None = None,
                 port: int | None = None, name: str = "server", token: str | None = None,
                 probe_token: str | None = None, extra: Sequence[str] = ()) -> None:
        self.port = port or free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.db = db if db is not None else workdir / "leukoscope.db"
        self.log = workdir / f"{name}.log"
        self.headers = {"Authorization": f"Bearer {probe_token or token}"} if (probe_token or token) else {}
        command = [sys.executable, "-m", "leukoscope", "serve", "--host", HOST, "--port", str(self.port),
                   "--db", str(self.db), "--workers", str(args.workers), "--queue", str(args.queue),
                   "--log-level", "warning"]
        if args.model:
            command += ["--model", str(args.model)]
        command += list(extra)
        env = {**os.environ}
        env.pop("LEUKOSCOPE_API_TOKEN", None)
        env.pop("LEUKOSCOPE_DB_URL", None)  # --db decides
        if token:
            env["LEUKOSCOPE_API_TOKEN"] = token
        self._log = open(self.log, "ab")  # noqa: SIM115 (closed in stop; appended to when a process restarts)
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"server exited ({self.process.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                response = httpx.get(f"{self.url}/api/v1/model", timeout=2, headers=self.headers)
                if response.status_code == 200:
                    return response.json()
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise SystemExit(f"server not ready after {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def kill9(self) -> None:
        """SIGKILL: no shutdown handler, nothing flushed (the crash case)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self._log.close()


async def hammer(url: str, images: list[bytes], requests: int, concurrency: int, max_seconds: float,
                 prefix: str = "load") -> tuple[list[float], dict[int, int], int, float]:
    """Send `requests` predictions from `concurrency` clients (netload.send, one backend); returns latencies
    of 200s, status counts (-1: no answer), the number sent, and the wall time."""
    run = await netload.send([netload.Backend("server", url)], [netload.Clinic("load", None)], images,
                             requests=requests, concurrency=concurrency, prefix=prefix, timeout=120,
                             max_seconds=max_seconds)
    statuses: dict[int, int] = {}
    for outcome in run.outcomes:
        statuses[outcome.status or -1] = statuses.get(outcome.status or -1, 0) + 1
    return [o.seconds for o in run.accepted()], statuses, len(run.outcomes), run.seconds


def warm_up(url: str, images: list[bytes]) -> int:
    return netload.warm_up(url, images, WARMUP)


def count_rows(db: str | Path, prefix: str | None = None) -> int:
    """Predictions in the database (of requests named `prefix-...` when given), read through the app's Store
    (SQLite or PostgreSQL)."""
    return netload.count_rows(db, prefix)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model package or run folder (default: the bundled package)")
    parser.add_argument("--requests", type=int, default=2000, help="prediction requests to send (default 2000)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--workers", type=int, default=1, help="server inference threads (default 1)")
    parser.add_argument("--queue", type=int, default=16, help="server queue beyond workers (default 16)")
    parser.add_argument("--images", type=Path, help="folder of images to send (default: synthetic JPEGs)")
    parser.add_argument("--image-size", type=int, default=256, help="side of the synthetic images (default 256)")
    parser.add_argument("--max-seconds", type=float, default=100.0, help="stop sending after this long")
    parser.add_argument("--db", help="database the server uses: a SQLite path or postgresql:// URL (default: a "
                        "fresh SQLite file in a temporary folder)")
    parser.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.requests > 100_000:
        parser.error("--requests must be 1..100000 and --concurrency at least 1")

    images = folder_images(args.images, 64) if args.images else synthetic_images(32, args.image_size)
    with tempfile.TemporaryDirectory(prefix="leukoscope-load-") as tmp:
        server = Server(args, Path(tmp), db=args.db)
        prefix = f"load{secrets.token_hex(4)}"  # this run's requests, told apart from any other rows
        try:
            card = server.wait_ready(timeout=180)
            warm_up(server.url, images)
            latencies, statuses, sent, seconds = asyncio.run(
                hammer(server.url, images, args.requests, args.concurrency, args.max_seconds, prefix))
            rows = count_rows(server.db, prefix)
        finally:
            server.stop()
        log_tail = server.log.read_text(errors="replace")[-2000:]
    accepted = statuses.get(200, 0)
    busy = statuses.get(503, 0)
    errors = sent - accepted - busy
    ms = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    result = Result(
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        model=str(card.get("model_version")), backend=str(card.get("backend")), requests=args.requests,
        concurrency=args.concurrency, workers=args.workers, queue=args.queue,
        image_size=0 if args.images else args.image_size, sent=sent, accepted=accepted, busy_503=busy,
        errors=errors, seconds=round(seconds, 3), throughput_rps=round(accepted / seconds, 2),
        p50_ms=round(float(np.percentile(ms, 50)), 2), p95_ms=round(float(np.percentile(ms, 95)), 2),
        p99_ms=round(float(np.percentile(ms, 99)), 2), db_rows=rows, db_ok=rows == accepted,
        cpu=f"{platform.machine()} x{os.cpu_count()}",
    )
    print(Result.HEADER)
    print(result.row())
    if errors:
        print(f"status counts: {statuses}\nserver log tail:\n{log_tail}", file=sys.stderr)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**asdict(result), "statuses": statuses}, indent=2) + "\n")
    return 0 if errors == 0 and result.db_ok else 1


if __name__ == "__main__":
    sys.exit(main())

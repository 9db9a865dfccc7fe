"""The load client and the row checks shared by load_server.py (one process, SQLite) and network_load.py (two
processes on PostgreSQL, with faults), so both measure with the same code.

Client: `concurrency` asyncio tasks pull request numbers from one counter and send single-image predictions,
each task on behalf of one clinic (its token), to the backends in round robin. A backend that refuses the
connection (nothing was sent, so a retry is safe: what nginx does with `proxy_next_upstream error`) is skipped
for a second and the request goes to the next one; a request that was sent and then lost (the process died
under it) or that outlasts the client timeout is never retried, only counted. Every request is named
`PREFIX-CLINIC-NNNNN.jpg`, so the rows it left are found by file name in any schema.

Rows are read through the app's own `Store` (SQLAlchemy), so the same checks run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

RETRY_DOWN_S = 1.0  # how long a backend that refused a connection is skipped (nginx's fail_timeout, shortened)
PREDICT = "/api/v1/predict"


@dataclass(frozen=True)
class Clinic:
    """Whom a client sends for: a clinic's name and the token it authenticates with (None: an open server)."""

    name: str
    token: str | None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


@dataclass
class Backend:
    """One server process as the client sees it."""

    name: str
    url: str
    down_until: float = 0.0
    in_flight: int = 0


@dataclass(frozen=True)
class Outcome:
    """One request: who sent it, who answered (or was last tried), and how it ended."""

    index: int
    clinic: str
    file_name: str
    backend: str
    status: int  # the HTTP status; 0 when no answer came
    failure: str  # "" (an HTTP answer) | "refused" (no backend took the connection) | "dropped" | "timeout"
    started: float  # time.perf_counter() when it was first sent
    seconds: float
    json_detail: bool  # the answer's body is a JSON object with a "detail" (how the app reports errors)
    retry_after: float = 0.0  # the answer's Retry-After (seconds, capped at 5), 0 without one


@dataclass
class LoadRun:
    """Everything one run of `send` saw."""

    outcomes: list[Outcome] = field(default_factory=list)
    started: float = 0.0
    seconds: float = 0.0

    def accepted(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == 200]

    def statuses(self) -> dict[str, int]:
        """Counts by HTTP status, or by failure ("refused", "dropped", "timeout") where none came."""
        counts: dict[str, int] = {}
        for o in self.outcomes:
            key = str(o.status) if o.status else o.failure
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))

    def latency_ms(self, q: float) -> float:
        """The q-th percentile of the accepted requests' latencies (0.0 when none was accepted)."""
        ms = [o.seconds * 1000 for o in self.accepted()]
        return round(float(np.percentile(ms, q)), 1) if ms else 0.0

    def rate(self) -> float:
        """Accepted requests per second of the run's wall time."""
        return round(len(self.accepted()) / self.seconds, 2) if self.seconds else 0.0


def file_name(prefix: str, clinic: str, index: int) -> str:
    return f"{prefix}-{clinic}-{index:05d}.jpg"


def _has_detail(response: httpx.Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and "detail" in body


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(5.0, max(0.0, float(response.headers.get("Retry-After", "0"))))
    except ValueError:
        return 0.0


async def send(backends: Sequence[Backend], clinics: Sequence[Clinic], images: Sequence[bytes], *, requests: int,
               concurrency: int, prefix: str, timeout: float = 60.0, max_seconds: float = 600.0,
               on_send: Callable[[int], None] | None = None, pause_on_503: bool = False) -> LoadRun:
    """Send `requests` predictions from `concurrency` clients (client k sends for clinics[k % len(clinics)]).

    With `pause_on_503` a client that is answered 503 waits the answer's Retry-After (at most 5 s) before its
    next request, as a well-behaved client does (the 503 is counted, the request is not retried).

    `on_send(n)` is called as the n-th request (counting from 0) is first sent: where a benchmark injects a
    fault (it must not block: start a thread).
    """
    run = LoadRun(started=time.perf_counter())
    counter = iter(range(requests))
    turn = iter(range(10**12))  # round robin over the backends, shared by all clients
    deadline = run.started + max_seconds
    limits = httpx.Limits(max_connections=2 * concurrency, max_keepalive_connections=2 * concurrency)

    def pick() -> Backend:
        now = time.perf_counter()
        first = next(turn)
        order = [backends[(first + k) % len(backends)] for k in range(len(backends))]
        return next((b for b in order if b.down_until <= now), order[0])

    async def one(client: httpx.AsyncClient, clinic: Clinic, index: int) -> Outcome:
        name = file_name(prefix, clinic.name, index)
        data = images[index % len(images)]
        started = time.perf_counter()
        if on_send is not None:
            on_send(index)
        backend = pick()
        for attempt in range(len(backends)):
            backend.in_flight += 1
            t0 = time.perf_counter()
            failure, status, detail, retry = "", 0, False, 0.0
            try:
                response = await client.post(backend.url + PREDICT, headers=clinic.headers(),
                                             files=[("files", (name, data, "image/jpeg"))])
                status, detail, retry = response.status_code, _has_detail(response), _retry_after(response)
            except (httpx.ConnectError, httpx.ConnectTimeout):
                failure = "refused"
            except httpx.TimeoutException:
                failure = "timeout"
            except httpx.TransportError:
                failure = "dropped"
            finally:
                backend.in_flight -= 1
            if failure != "refused" or attempt == len(backends) - 1:
                return Outcome(index, clinic.name, name, backend.name, status, failure, started,
                               time.perf_counter() - t0, detail, retry)
            backend.down_until = time.perf_counter() + RETRY_DOWN_S
            backend = next(b for b in backends[backends.index(backend) + 1:] + backends if b is not backend)
        raise AssertionError("unreachable")

    async def client_loop(client: httpx.AsyncClient, clinic: Clinic) -> None:
        for index in counter:
            if time.perf_counter() > deadline:
                return
            outcome = await one(client, clinic, index)
            run.outcomes.append(outcome)
            if pause_on_503 and outcome.status == 503:
                await asyncio.sleep(outcome.retry_after)

    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        await asyncio.gather(*(client_loop(client, clinics[k % len(clinics)]) for k in range(concurrency)))
    run.seconds = time.perf_counter() - run.started
    run.outcomes.sort(key=lambda o: o.index)
    return run


def warm_up(url: str, images: Sequence[bytes], count: int, headers: dict[str, str] | None = None) -> int:
    """`count` predictions one after another (first-request costs out of the timed run); how many got 200."""
    ok = 0
    for i in range(count):
        response = httpx.post(f"{url}{PREDICT}", timeout=120, headers=headers or {},
                              files=[("files", (f"warm-{i}.jpg", images[i % len(images)], "image/jpeg"))])
        ok += response.status_code == 200
    return ok


# ------------------------------------------------------------------------------------------- rows


def store_query(target: str | Path, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rows of one read through the app's Store (SQLite path or PostgreSQL URL), as plain dicts."""
    from leukoscope.serve.store import Store

    store = Store(target)
    try:
        return [dict(r) for r in store.query(sql, params)]
    finally:
        store.close()


def count_rows(target: str | Path, prefix: str | None = None) -> int:
    """Predictions in the database (only those of requests named `prefix-...` when given)."""
    where, params = ("", {}) if prefix is None else (" WHERE file_name LIKE :p", {"p": f"{prefix}-%"})
    return int(store_query(target, f"SELECT COUNT(*) AS n FROM predictions{where}", params)[0]["n"])


def stored_names(target: str | Path, prefix: str) -> list[str]:
    """File names of the rows left by requests named `prefix-...` (one per row, duplicates kept)."""
    rows = store_query(target, "SELECT file_name FROM predictions WHERE file_name LIKE :p", {"p": f"{prefix}-%"})
    return [r["file_name"] for r in rows]

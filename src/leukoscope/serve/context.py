"""The per-app state every handler reaches through the `get_ctx` dependency."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from leukoscope.serve.cell_service import CellService
from leukoscope.serve.limits import Gate, RequestRejected
from leukoscope.serve.service import PredictionService
from leukoscope.serve.settings import Settings
from leukoscope.serve.store import Store
from leukoscope.serve.verify_service import VerificationService

T = TypeVar("T")


@dataclass
class ServerContext:
    """Everything a request handler needs, created in the lifespan."""

    settings: Settings
    service: PredictionService
    store: Store
    executor: ThreadPoolExecutor
    gate: Gate
    templates: Jinja2Templates
    verifier: VerificationService
    cells: CellService  # a sample's cells, computed lazily (serve/cell_service.py)

    @asynccontextmanager
    async def admitted(self) -> AsyncIterator[Slot]:
        """Take one of the `workers + queue` inference slots, or refuse at once with 503 + Retry-After.

        Taken before the upload is read, so at most `capacity` request bodies are ever held in memory.
        """
        if not self.gate.try_enter():
            raise RequestRejected(
                "server busy: too many predictions in progress, retry shortly", 503,
                headers={"Retry-After": str(self.settings.retry_after_s)},
            )
        slot = Slot(self)
        try:
            yield slot
        finally:
            if not slot.handed_off:
                self.gate.leave()

    async def run_inference(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` in the inference pool under a slot (503 when there is none)."""
        async with self.admitted() as slot:
            return await slot.run(fn, *args)

    async def run_io(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Database reads and small image work: off the event loop, in the default thread pool."""
        return await run_in_threadpool(fn, *args, **kwargs)


class Slot:
    """An admitted request's right to run work in the inference pool."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.handed_off = False

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run in the pool. The slot is freed when the work ends, not when the client goes away: a
        disconnected client's prediction still finishes (and is stored), and the pool never holds more
        than its capacity."""
        future = asyncio.get_running_loop().run_in_executor(self.ctx.executor, functools.partial(fn, *args))
        self.handed_off = True
        future.add_done_callback(lambda _: self.ctx.gate.leave())
        return await asyncio.shield(future)


def get_ctx(request: Request) -> ServerContext:
    """FastAPI dependency: the server context of the running app."""
    return request.app.state.ctx

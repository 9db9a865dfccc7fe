"""Durability with a real server process: kill -9 right after N answers, restart, all N rows are there;
concurrent clients never lose or duplicate a row."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import httpx
import pytest

from leukoscope.serve.store import Store
from tests.serve.servers import ServerProcess


def post_one(url: str, name: str, data: bytes) -> httpx.Response:
    return httpx.post(f"{url}/api/v1/predict", files=[("files", (name, data, "image/jpeg"))], timeout=60)


def rows_in(db: Path | str) -> list[tuple]:
    if isinstance(db, str):  # a database URL
        with Store(db) as store:
            return [(r["uid"], r["file_name"]) for r in store.query("SELECT uid, file_name FROM predictions ORDER BY id")]
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT uid, file_name FROM predictions ORDER BY id").fetchall()


def kill_restart_check(tmp_path: Path, image_bytes, *, n: int, db: Path | str | None = None, **server) -> None:
    db = db or tmp_path / "data" / "leukoscope.db"
    names = [f"cell-{i}.jpg" for i in range(n)]
    with ServerProcess(db, tmp_path / "server.log", **server) as first:
        for i, name in enumerate(names):
            response = post_one(first.url, name, image_bytes(seed=i))
            assert response.status_code == 200, response.text
        first.kill9()  # immediately after the last answer: no graceful shutdown, no checkpoint
        assert first.process is not None and first.process.returncode == -9
    with ServerProcess(db, tmp_path / "server2.log", **server) as second:
        history = httpx.get(f"{second.url}/api/v1/predictions", params={"per_page": 100}, timeout=30).json()
        assert history["total"] == n
        assert sorted(item["file_name"] for item in history["items"]) == sorted(names)
        assert post_one(second.url, "after.jpg", image_bytes(seed=99)).status_code == 200
    assert [name for _, name in rows_in(db)] == [*names, "after.jpg"]


def test_kill_9_loses_nothing_fake_model(tmp_path: Path, image_bytes):
    kill_restart_check(tmp_path, image_bytes, n=6)


@pytest.mark.slow
def test_kill_9_loses_nothing_on_postgresql(tmp_path: Path, image_bytes, postgres_url: str):
    """Every answered prediction is committed in PostgreSQL too before its answer leaves."""
    kill_restart_check(tmp_path, image_bytes, n=6, db=postgres_url)


@pytest.mark.slow
def test_kill_9_loses_nothing_real_cli(tmp_path: Path, image_bytes, tiny_package: Path):
    """The same through the real `leukoscope serve` command on a real tiny model package. Without the
    Grad-CAM warm-up (it imports PyTorch, ~10 s of each start here): durability does not depend on it, and
    tests/serve/test_gradcam_view.py covers the warm-up."""
    kill_restart_check(tmp_path, image_bytes, n=4, model=tiny_package, cli=True, extra=["--no-warmup"])


def test_concurrent_clients_one_row_per_accepted_request(tmp_path: Path, image_bytes):
    db = tmp_path / "data" / "leukoscope.db"
    payloads = [image_bytes(seed=i) for i in range(24)]

    async def run(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            async def one(i: int) -> httpx.Response:
                return await client.post("/api/v1/predict", files=[("files", (f"{i}.jpg", payloads[i], "image/jpeg"))])

            return list(await asyncio.gather(*(one(i) for i in range(len(payloads)))))

    with ServerProcess(db, tmp_path / "server.log", extra=["--workers", "2", "--queue", "6"]) as server:
        responses = asyncio.run(run(server.url))
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 503}, statuses
        accepted = sorted(f"{i}.jpg" for i, r in enumerate(responses) if r.status_code == 200)
        assert accepted, "at least the first requests must be accepted"
        ids = [r.json()["results"][0]["id"] for r in responses if r.status_code == 200]
    stored = rows_in(db)
    assert sorted(name for _, name in stored) == accepted
    assert sorted(i for i, _ in stored) == sorted(ids) and len(set(ids)) == len(ids)


@pytest.mark.parametrize("token", ["tok-123-long-enough-16"])
def test_real_server_with_token(tmp_path: Path, image_bytes, token: str):
    with ServerProcess(tmp_path / "db.sqlite", tmp_path / "server.log", token=token) as server:
        assert httpx.get(f"{server.url}/api/v1/health").status_code == 401
        ok = httpx.get(f"{server.url}/api/v1/health", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200

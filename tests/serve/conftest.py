"""Fixtures for the web app tests: an app on the fake predictor, bad uploads, a real tiny package, users."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from leukoscope.serve import Settings, create_app
from tests.serve.fakes import FakeCells, FakePredictor, fake_gradcam


@pytest.fixture(autouse=True)
def fast_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2id with the cheapest parameters (the library's defaults take about half a second a hash here);
    tests/serve/test_users.py checks the real defaults once."""
    from argon2 import PasswordHasher

    from leukoscope.serve import users

    monkeypatch.setattr(users, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    monkeypatch.setattr(users, "_dummy_hash", None)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # warm-up: tests/serve/test_gradcam_view.py. "testserver" is the Host header of Starlette's TestClient;
    # a real server answers loopback names only (tests/serve/test_hosts.py).
    return Settings(db=tmp_path / "data" / "leukoscope.db", warmup=False, allowed_hosts=("testserver",))


@pytest.fixture
def make_client(settings: Settings) -> Iterator[Callable[..., TestClient]]:
    """Factory: make_client(predictor=None, gradcam=fake_gradcam, raise_server_exceptions=True, cells=None,
    **settings) -> a started TestClient (lifespan run) on the fake predictor unless one is given, and fake cells
    (tests/serve/fakes.py FakeCells) unless a cells function is given."""
    with ExitStack() as stack:

        def make(predictor: Any = None, gradcam: Any = fake_gradcam, raise_server_exceptions: bool = True,
                 cells: Any = None, **changes: Any) -> TestClient:
            app = create_app(settings.with_(**changes), predictor or FakePredictor(), gradcam=gradcam,
                             cells=cells or FakeCells())
            client = TestClient(app, raise_server_exceptions=raise_server_exceptions)
            return stack.enter_context(client)

        yield make


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tiny model package (tests/helpers/modelfixtures.py); skips where it cannot be built."""
    try:
        from tests.helpers.modelfixtures import shared_tiny_package
    except ImportError as exc:
        pytest.skip(f"tests/helpers/modelfixtures.py not available: {exc}")
    return shared_tiny_package(tmp_path_factory)


PASSWORD = "correct horse battery"  # what add_user gives every test user


@pytest.fixture
def add_user(settings: Settings) -> Callable[..., None]:
    """add_user(name, role="technologist", password=PASSWORD): a user in the test server's database (made
    before or while the app runs, as `leukoscope users add` does)."""
    from leukoscope.serve.store import Store
    from leukoscope.serve.users import Users

    def add(name: str, role: str = "technologist", password: str = PASSWORD) -> None:
        with Store(settings.db) as store:
            Users(store).add(name, role, password)

    return add


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Any]:
    """One throwaway PostgreSQL cluster for the whole test session (tests/serve/pg.py); skips with the reason
    where PostgreSQL cannot be had."""
    from tests.serve.pg import PostgresCluster, Unavailable

    cluster = PostgresCluster()
    try:
        cluster.start()
    except Unavailable as exc:
        pytest.skip(f"PostgreSQL not available: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster: Any) -> str:
    """A URL on the session's cluster whose tables live in a schema of their own (one per test)."""
    import uuid

    import psycopg

    from tests.serve.pg import schema_url

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{postgres_cluster.port}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return schema_url(postgres_cluster.url, schema)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on an embedded SQLite file and on PostgreSQL (skipped where PostgreSQL cannot be had)."""
    if request.param == "sqlite":
        return str(tmp_path / "sub" / "db.sqlite")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def any_store(db_url: str) -> Iterator[Any]:
    """An open store on SQLite and on PostgreSQL (parametrised through db_url)."""
    from leukoscope.serve.store import Store

    with Store(db_url) as store:
        yield store

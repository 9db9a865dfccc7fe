"""Which database, and what happens when it is not there: a database URL that cannot be reached is one line
and exit 1 at start-up (never a traceback); a PostgreSQL that goes away while the server runs makes requests
fail at once with 503 JSON and Retry-After (never a hang), and service resumes by itself when it is back;
URLs are checked and their passwords never shown; several server processes share one database's sessions."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from leukoscope.cli import app as cli_app
from leukoscope.errors import DataError, UsageError
from leukoscope.serve.database import database_url, display
from leukoscope.serve.settings import Settings, database_from_env
from leukoscope.serve.store import Store
from tests.serve.fakes import files
from tests.serve.servers import REPO, ServerProcess

UNREACHABLE = "postgresql://leuko:s3cret-pw@127.0.0.1:1/leukoscope"  # port 1: nothing listens there


def test_database_urls_are_checked_and_their_passwords_never_shown(tmp_path: Path):
    url = database_url(UNREACHABLE)
    assert url.drivername == "postgresql+psycopg" and "s3cret" not in display(url) and "***" in display(url)
    assert display(database_url(tmp_path / "x.db")) == str(tmp_path / "x.db")
    for bad, words in (("mysql://u@h/db", "unsupported database 'mysql'"), ("postgresql://u@h", "names no database"),
                       ("sqlite://", "must name a file")):
        with pytest.raises(UsageError, match=words):
            database_url(bad)
    with pytest.raises(UsageError) as info:
        Settings(db_url="oracle://u:s3cret-pw@h/db")
    assert "s3cret" not in str(info.value)
    settings = Settings(db=UNREACHABLE)  # --db takes a URL as well as a path
    assert settings.db_url == UNREACHABLE and settings.database == UNREACHABLE and "s3cret" not in repr(settings)
    assert "s3cret" not in settings.database_shown


def test_the_database_comes_from_db_then_the_url_variable_then_the_path_variable():
    env = {"LEUKOSCOPE_DB_URL": UNREACHABLE, "LEUKOSCOPE_DB": "/tmp/a.db"}
    assert database_from_env(None, env) == UNREACHABLE == Settings.from_env(env).database
    assert database_from_env("/tmp/b.db", env) == Path("/tmp/b.db") == Settings.from_env(env, db="/tmp/b.db").database
    assert database_from_env(None, {"LEUKOSCOPE_DB": "/tmp/a.db"}) == Path("/tmp/a.db")


def test_an_unreachable_database_is_one_error_line(tmp_path: Path):
    with pytest.raises(DataError, match=r"cannot reach the database postgresql\+psycopg://leuko:\*\*\*@127\.0\.0\.1:1/"
                                        r"leukoscope: .*") as info:
        Store(UNREACHABLE).open()
    assert "\n" not in str(info.value) and "s3cret" not in str(info.value)
    result = CliRunner().invoke(cli_app, ["users", "list", "--db", UNREACHABLE])
    assert result.exit_code != 0 and isinstance(result.exception, DataError)
    result = CliRunner().invoke(cli_app, ["db", "upgrade", "--db", UNREACHABLE])
    assert isinstance(result.exception, DataError) and "cannot reach the database" in str(result.exception)


def test_serve_with_an_unreachable_database_exits_1_with_one_line(tmp_path: Path):
    done = subprocess.run([sys.executable, "-m", "leukoscope", "serve", "--db", UNREACHABLE, "--model",
                           str(tmp_path / "none")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot reach the database" in lines[0], lines
    assert "Traceback" not in done.stderr and "s3cret" not in done.stderr + done.stdout


def test_db_upgrade_migrates_and_says_the_version(tmp_path: Path):
    result = CliRunner().invoke(cli_app, ["db", "upgrade", "--db", str(tmp_path / "new.db")])
    assert result.exit_code == 0, result.output
    assert "schema version 8" in result.output and (tmp_path / "new.db").is_file()


TOKEN = "pg-outage-token-0123456789"


def test_postgresql_going_away_answers_503_at_once_and_service_resumes(make_client, postgres_url: str,
                                                                       postgres_cluster, image_bytes):
    client = make_client(db=postgres_url, token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post("/api/v1/predict", files=files(("a.jpg", image_bytes(seed=1))), headers=auth).status_code == 200
    postgres_cluster.stop_server()
    try:
        for method, path, kwargs in (("GET", "/api/v1/predictions", {}), ("GET", "/api/v1/health", {}),
                                     ("POST", "/api/v1/predict", {"files": files(("b.jpg", image_bytes(seed=2)))})):
            response = client.request(method, path, headers=auth, **kwargs)
            assert response.status_code == 503, (path, response.text)
            assert response.json()["detail"] == "the database is unavailable right now: retry shortly"
            assert response.headers["retry-after"] and "127.0.0.1" not in response.text  # details: the log only
        page = client.get("/history", headers={**auth, "Accept": "text/html"})
        assert page.status_code in (500, 503)  # a page too: an answer, not a hang
    finally:
        postgres_cluster.start_server()
    listing = client.get("/api/v1/predictions", headers=auth)  # the same app, no restart: reconnected
    assert listing.status_code == 200 and listing.json()["total"] == 1


@pytest.mark.slow
def test_two_server_processes_share_sessions_and_rows_on_one_database(tmp_path: Path, db_url: str, image_bytes):
    """N processes behind a proxy (or `--processes N`): a login made through one works through the other,
    and each sees the other's predictions."""
    with ServerProcess(db_url, tmp_path / "one.log", token=TOKEN) as one, \
            ServerProcess(db_url, tmp_path / "two.log", token=TOKEN) as two:
        login = httpx.post(f"{one.url}/login", data={"token": TOKEN, "next": "/"}, follow_redirects=False,
                           headers={"Origin": one.url})
        assert login.status_code == 303, login.text
        cookie = {"leukoscope_session": login.cookies["leukoscope_session"]}
        assert httpx.get(f"{two.url}/api/v1/health", cookies=cookie).status_code == 200
        posted = httpx.post(f"{two.url}/api/v1/predict", files=files(("c.jpg", image_bytes(seed=3))), cookies=cookie,
                            headers={"Origin": two.url}, timeout=60)
        assert posted.status_code == 200, posted.text
        assert httpx.get(f"{one.url}/api/v1/predictions", cookies=cookie).json()["total"] == 1
        httpx.post(f"{two.url}/logout", cookies=cookie, headers={"Origin": two.url})
        assert httpx.get(f"{one.url}/api/v1/health", cookies=cookie).status_code == 401  # logged out everywhere


@pytest.mark.slow
def test_serve_processes_2_runs_two_processes_on_one_port(tmp_path: Path, tiny_package: Path, image_bytes):
    """`leukoscope serve --processes 2` on a real tiny package: two uvicorn workers answer, both store."""
    db = tmp_path / "data" / "leukoscope.db"
    with ServerProcess(db, tmp_path / "server.log", model=tiny_package, cli=True,
                       extra=["--processes", "2", "--no-warmup", "--log-level", "info"]) as server:
        for seed in range(4):
            assert httpx.post(f"{server.url}/api/v1/predict", files=files((f"{seed}.jpg", image_bytes(seed=seed))),
                              timeout=60).status_code == 200
        # the first worker can answer all four before the second has finished starting: wait for it
        deadline = time.monotonic() + 60
        while server.log().count("Application startup complete") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        log = server.log()
    assert log.count("Application startup complete") == 2, log[-2000:]
    with Store(db) as store:
        assert store.count() == 4


def test_users_commands_work_on_postgresql(postgres_url: str, tmp_path: Path):
    secret = tmp_path / "pw"
    secret.write_text("correct horse battery\n")
    runner = CliRunner()
    added = runner.invoke(cli_app, ["users", "add", "alice", "--role", "admin", "--password-file", str(secret),
                                    "--db", postgres_url])
    assert added.exit_code == 0, added.output
    assert "added admin alice to postgresql+psycopg://postgres@127.0.0.1" in added.output
    listed = runner.invoke(cli_app, ["users", "list"], env={"LEUKOSCOPE_DB_URL": postgres_url})
    assert listed.exit_code == 0 and "alice" in listed.output and "admin" in listed.output
    again = runner.invoke(cli_app, ["users", "add", "ALICE", "--password-file", str(secret), "--db", postgres_url])
    assert isinstance(again.exception, DataError) and "already exists" in str(again.exception)

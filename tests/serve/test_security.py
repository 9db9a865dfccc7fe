"""Token authentication (header, X-API-Token, login cookie), exposure checks, names, redirects."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from leukoscope.cli import app as cli_app
from leukoscope.errors import UsageError
from leukoscope.serve import Settings, check_exposure
from leukoscope.serve.limits import clean_filename
from leukoscope.serve.security import COOKIE_NAME, safe_next
from leukoscope.serve.settings import is_loopback
from tests.serve.fakes import files

TOKEN = "s3cret-token-for-tests"


@pytest.fixture
def secured(make_client):
    return make_client(token=TOKEN)


def test_without_a_token_everything_is_open(client):
    assert client.get("/api/v1/health").status_code == 200
    assert client.get("/").status_code == 200
    assert client.get("/login", follow_redirects=False).status_code == 303  # no login when no token


@pytest.mark.parametrize("path", ["/api/v1/health", "/api/v1/model", "/api/v1/predictions",
                                  "/api/v1/predictions.csv", "/openapi.json", "/docs", "/history", "/"])
def test_every_route_needs_the_token(secured, path):
    response = secured.get(path, follow_redirects=False)
    assert response.status_code == 401
    assert response.json()["detail"].startswith("authentication required")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.headers["x-frame-options"] == "DENY"  # errors carry the security headers too


def test_predict_needs_the_token(secured, image_bytes):
    response = secured.post("/api/v1/predict", files=files(("a.jpg", image_bytes())))
    assert response.status_code == 401


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {TOKEN}"}, {"authorization": f"bearer {TOKEN}"},
                                     {"X-API-Token": TOKEN}])
def test_token_headers_are_accepted(secured, headers, image_bytes):
    assert secured.get("/api/v1/health", headers=headers).status_code == 200
    response = secured.post("/api/v1/predict", files=files(("a.jpg", image_bytes())), headers=headers)
    assert response.status_code == 200


@pytest.mark.parametrize("headers", [{"Authorization": "Bearer wrong"}, {"X-API-Token": TOKEN[:-1]},
                                     {"Authorization": TOKEN}, {"Cookie": f"{COOKIE_NAME}={TOKEN}"},
                                     {"Cookie": 'bad"cookie;;='}])
def test_wrong_tokens_are_refused(secured, headers):
    assert secured.get("/api/v1/health", headers=headers).status_code == 401


def test_browser_is_sent_to_login_and_the_cookie_works(secured):
    page = secured.get("/history?label=Benign", headers={"Accept": "text/html"}, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Fhistory%3Flabel%3DBenign"
    form = secured.get("/login?next=/history")
    assert form.status_code == 200 and 'name="token"' in form.text
    assert secured.get("/static/style.css").status_code == 200  # the login page needs its stylesheet
    assert secured.get("/docs-static/swagger-ui.css").status_code == 200  # library files, no data: public
    assert secured.get("/docs", follow_redirects=False).status_code in (303, 401)  # the docs page is not
    wrong = secured.post("/login", data={"token": "nope", "next": "/history"}, follow_redirects=False)
    assert wrong.status_code == 401 and "wrong token" in wrong.text
    ok = secured.post("/login", data={"token": TOKEN, "next": "/history"}, follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == "/history"
    cookie = ok.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert TOKEN not in cookie and "Max-Age=43200" in cookie  # a random session id, 12 h by default
    assert secured.get("/history").status_code == 200  # the client kept the cookie
    assert secured.get("/api/v1/health").status_code == 200
    out = secured.post("/logout", follow_redirects=False)
    assert out.status_code == 303
    secured.cookies.clear()
    assert secured.get("/api/v1/health").status_code == 401


def test_login_never_redirects_off_site(secured):
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example", "javascript:alert(1)"):
        response = secured.post("/login", data={"token": TOKEN, "next": target}, follow_redirects=False)
        assert response.headers["location"] == "/"
    assert safe_next("/history?page=2") == "/history?page=2"


def test_exposure_check():
    check_exposure(Settings(host="127.0.0.1"))
    check_exposure(Settings(host="::1"))
    check_exposure(Settings(host="localhost"))
    check_exposure(Settings(host="0.0.0.0", token=TOKEN))
    check_exposure(Settings(host="0.0.0.0", insecure=True))
    with pytest.raises(UsageError, match=r"refusing to listen on 0\.0\.0\.0"):
        check_exposure(Settings(host="0.0.0.0"))
    with pytest.raises(UsageError):
        check_exposure(Settings(host="192.168.1.20"))
    assert is_loopback("127.0.0.2") and not is_loopback("example.org")


def test_cli_refuses_an_open_public_bind_before_loading_a_model(monkeypatch, tmp_path):
    monkeypatch.delenv("LEUKOSCOPE_API_TOKEN", raising=False)
    result = CliRunner().invoke(cli_app, ["serve", "--host", "0.0.0.0", "--model", str(tmp_path / "none"),
                                          "--db", str(tmp_path / "db.sqlite")])
    assert result.exit_code != 0
    assert isinstance(result.exception, UsageError) and "--insecure" in str(result.exception)
    assert not (tmp_path / "db.sqlite").exists()


def test_settings_from_env():
    settings = Settings.from_env({"LEUKOSCOPE_API_TOKEN": TOKEN, "LEUKOSCOPE_DB": "/tmp/x/y.db"}, port=9000,
                                 model=None)
    assert settings.token == TOKEN and str(settings.db) == "/tmp/x/y.db" and settings.port == 9000
    assert TOKEN not in repr(settings)
    assert Settings.from_env({}, db="here.db").db.name == "here.db"
    assert Settings.from_env({"LEUKOSCOPE_API_TOKEN": ""}).token is None
    with pytest.raises(UsageError, match="workers"):
        Settings(workers=0)
    with pytest.raises(UsageError, match="keep_images_days must be more than 0"):
        Settings(keep_images_days=0)


def test_cli_passes_the_retention_period_to_the_server(monkeypatch, tmp_path):
    import leukoscope.serve as serve_module

    seen = []

    def stop(settings, **_):
        seen.append(settings)
        raise UsageError("stopped by the test")

    monkeypatch.setattr(serve_module, "check_exposure", stop)
    result = CliRunner().invoke(cli_app, ["serve", "--keep-images-days", "30", "--db", str(tmp_path / "db.sqlite")])
    assert result.exit_code != 0 and seen and seen[0].keep_images_days == 30.0


@pytest.mark.parametrize("raw, expected", [
    ("../../etc/passwd", "passwd"), ("C:\\Users\\me\\cell.jpg", "cell.jpg"), ("a\x00b\x1b[31m.jpg", "ab[31m.jpg"),
    ("", "upload-3"), (None, "upload-3"), ("..", "upload-3"), ("x" * 500, "x" * 200),
])
def test_clean_filename(raw, expected):
    assert clean_filename(raw, 2) == expected


def test_token_guessing_is_locked_out_but_the_right_token_always_works(secured):
    for _ in range(10):
        assert secured.get("/api/v1/health", headers={"Authorization": "Bearer guess"}).status_code == 401
    locked = secured.get("/api/v1/health", headers={"Authorization": "Bearer guess again"})
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0
    assert locked.json()["detail"].startswith("too many wrong tokens from this address")
    assert secured.get("/static/style.css").status_code == 200  # public files are not locked
    # one guesser behind a lab's proxy does not lock out the colleagues who know the token
    assert secured.get("/api/v1/health", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert secured.get("/api/v1/health", headers={"Authorization": "Bearer guess"}).status_code == 401  # cleared


def test_wrong_tokens_typed_into_the_login_form_are_locked_out_too(secured):
    for _ in range(10):
        assert secured.post("/login", data={"token": "nope", "next": "/"}, follow_redirects=False).status_code == 401
    page = secured.post("/login", data={"token": "nope", "next": "/"}, follow_redirects=False)
    assert page.status_code == 429 and "too many wrong tokens" in page.text and page.headers["retry-after"]
    # the form and the API share one count
    assert secured.get("/api/v1/health", headers={"X-API-Token": "nope"}).status_code == 429
    right = secured.post("/login", data={"token": TOKEN, "next": "/history"}, follow_redirects=False)
    assert right.status_code == 303 and right.headers["location"] == "/history"


def test_requests_without_credentials_are_not_counted_as_guesses(secured):
    for _ in range(12):
        assert secured.get("/api/v1/health").status_code == 401
    assert secured.get("/api/v1/health", headers={"X-API-Token": TOKEN}).status_code == 200


def login(client, token=TOKEN) -> str:
    """Log in through the form; returns the session cookie's value."""
    response = client.post("/login", data={"token": token, "next": "/"}, follow_redirects=False)
    assert response.status_code == 303
    return response.cookies[COOKIE_NAME]


def test_logout_revokes_the_session_on_the_server(secured):
    session = login(secured)
    secured.cookies.clear()
    stolen = {"Cookie": f"{COOKIE_NAME}={session}"}  # a copy of the cookie, e.g. in another browser
    assert secured.get("/api/v1/health", headers=stolen).status_code == 200
    assert secured.post("/logout", headers=stolen, follow_redirects=False).status_code == 303
    assert secured.get("/api/v1/health", headers=stolen).status_code == 401


def test_sessions_expire_after_the_configured_hours(make_client):
    client = make_client(token=TOKEN, session_hours=2)
    response = client.post("/login", data={"token": TOKEN, "next": "/"}, follow_redirects=False)
    assert "Max-Age=7200" in response.headers["set-cookie"]
    assert client.get("/api/v1/health").status_code == 200
    sessions = client.app.state.sessions
    start = sessions.clock()
    sessions.clock = lambda: start + 2 * 3600 + 1
    assert client.get("/api/v1/health").status_code == 401
    page = client.get("/history", headers={"Accept": "text/html"}, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/login")  # back to the form


def test_stale_cookies_are_not_counted_as_guesses(secured):
    for _ in range(12):
        assert secured.get("/api/v1/health", headers={"Cookie": f"{COOKIE_NAME}=stale"}).status_code == 401
    assert secured.post("/login", data={"token": "nope", "next": "/"}, follow_redirects=False).status_code == 401


@pytest.mark.parametrize("token", ["short", "x" * 15])
def test_tokens_under_16_characters_are_refused(token):
    with pytest.raises(UsageError, match=r"too short .* at least 16"):
        Settings(token=token)
    Settings(token="x" * 16)


def test_cli_refuses_a_short_token_at_start_up(monkeypatch, tmp_path):
    monkeypatch.setenv("LEUKOSCOPE_API_TOKEN", "tok-123")
    result = CliRunner().invoke(cli_app, ["serve", "--model", str(tmp_path / "none"), "--db", str(tmp_path / "db")])
    assert result.exit_code != 0
    assert isinstance(result.exception, UsageError) and "too short" in str(result.exception)
    assert "\n" not in str(result.exception) and "tok-123" not in str(result.exception)
    assert not (tmp_path / "db").exists()


def test_cli_passes_hosts_and_session_hours(monkeypatch, tmp_path):
    import leukoscope.serve as serve_module

    seen = []

    def stop(settings, **_):
        seen.append(settings)
        raise UsageError("stopped by the test")

    monkeypatch.setattr(serve_module, "check_exposure", stop)
    monkeypatch.setenv("LEUKOSCOPE_ALLOWED_HOSTS", "from-env.example")
    result = CliRunner().invoke(cli_app, ["serve", "--allowed-host", "lab.example", "--allowed-host", "*.lab.example",
                                          "--session-hours", "1.5", "--db", str(tmp_path / "db")])
    assert result.exit_code != 0 and seen
    assert seen[0].allowed_hosts == ("lab.example", "*.lab.example") and seen[0].session_hours == 1.5
    monkeypatch.setattr(serve_module, "check_exposure", stop)
    CliRunner().invoke(cli_app, ["serve", "--db", str(tmp_path / "db")])
    assert seen[1].allowed_hosts == ("from-env.example",) and seen[1].session_hours == 12.0


def test_the_cookie_is_secure_behind_a_tls_proxy(make_client):
    client = make_client(token=TOKEN, allowed_hosts=("testserver", "lab.example"))
    headers = {"Host": "127.0.0.1:8000", "Origin": "https://lab.example"}  # nginx: https outside, http inside
    response = client.post("/login", data={"token": TOKEN, "next": "/"}, headers=headers, follow_redirects=False)
    assert response.status_code == 303 and "Secure" in response.headers["set-cookie"]
    plain = client.post("/login", data={"token": TOKEN, "next": "/"}, follow_redirects=False)
    assert "Secure" not in plain.headers["set-cookie"]

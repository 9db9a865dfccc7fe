"""DNS rebinding (Host check) and cross-site requests (Origin/Referer check), in the default no-token mode."""

from __future__ import annotations

import pytest

from leukoscope.serve import Settings
from leukoscope.serve.hosts import same_origin
from tests.serve.fakes import files
from tests.serve.test_api import jpeg

LOCAL = "http://127.0.0.1:8000"


@pytest.fixture
def local(make_client):
    """The default server: no token, loopback names only (TestClient's own "testserver" name not added)."""
    return make_client(allowed_hosts=())


def stored(client) -> int:
    return client.get("/api/v1/predictions", headers={"Host": "127.0.0.1:8000"}).json()["total"]


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "", "[::2]:8000"])
def test_an_unknown_host_is_refused_with_json(local, host):
    response = local.get("/api/v1/predictions", headers={"Host": host})
    assert response.status_code == 400
    assert response.json()["detail"].startswith("unknown Host header")
    assert response.headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost", "LOCALHOST:8000", "[::1]:8000"])
def test_loopback_names_are_answered(local, host):
    assert local.get("/api/v1/health", headers={"Host": host}).status_code == 200


def test_allowed_hosts_and_the_bound_host_are_answered(make_client):
    client = make_client(host="192.168.1.20", insecure=True, allowed_hosts=("lab.example", "*.ward.example"))
    for host in ("192.168.1.20:8000", "lab.example", "pc1.ward.example:8000"):
        assert client.get("/api/v1/health", headers={"Host": host}).status_code == 200, host
    assert client.get("/api/v1/health", headers={"Host": "other.example"}).status_code == 400
    assert Settings(host="0.0.0.0").trusted_hosts == ["localhost", "127.0.0.1", "[::1]"]  # not the wildcard


def test_a_cross_site_post_is_refused_and_nothing_is_stored(local, image_bytes):
    headers = {"Host": "127.0.0.1:8000", "Origin": "https://evil.example"}
    response = local.post("/api/v1/predict", files=files(("a.jpg", jpeg(image_bytes))), headers=headers)
    assert response.status_code == 403 and response.headers["content-type"] == "application/json"
    assert response.json()["detail"].startswith("cross-site request refused")
    assert stored(local) == 0


@pytest.mark.parametrize("headers", [
    {"Origin": "null"},  # sandboxed frame or file: page
    {"Origin": "http://127.0.0.1:9999"},  # another port on this machine is another site
    {"Origin": "http://localhost:8000"},  # the same server under another name: not what the Host says
    {"Referer": "https://evil.example/page"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Origin": "not a url"},
])
def test_other_origins_are_refused(local, image_bytes, headers):
    response = local.post("/api/v1/predict", files=files(("a.jpg", jpeg(image_bytes))),
                          headers={"Host": "127.0.0.1:8000", **headers})
    assert response.status_code == 403, headers
    assert stored(local) == 0


@pytest.mark.parametrize("headers", [
    {"Origin": LOCAL}, {"Origin": "https://127.0.0.1:8000"},  # behind a TLS proxy the scheme differs
    {"Referer": LOCAL + "/history"}, {"Sec-Fetch-Site": "same-origin", "Origin": LOCAL},
    {},  # curl, scripts, the CLI: not a browser page
])
def test_same_origin_and_non_browser_posts_are_accepted(local, image_bytes, headers):
    response = local.post("/api/v1/predict", files=files(("a.jpg", jpeg(image_bytes))),
                          headers={"Host": "127.0.0.1:8000", **headers})
    assert response.status_code == 200, headers


def test_the_login_form_is_protected_too(make_client):
    client = make_client(token="a-long-enough-token-1234", allowed_hosts=())
    headers = {"Host": "localhost:8000", "Origin": "https://evil.example"}
    response = client.post("/login", data={"token": "a-long-enough-token-1234"}, headers=headers,
                           follow_redirects=False)
    assert response.status_code == 403 and "set-cookie" not in response.headers
    for _ in range(12):  # refused before authentication: cross-site tries are not counted as guesses
        client.post("/login", data={"token": "x"}, headers=headers, follow_redirects=False)
    ok = client.post("/login", data={"token": "x"}, headers={"Host": "localhost:8000"}, follow_redirects=False)
    assert ok.status_code == 401


def test_reads_are_not_subject_to_the_origin_check(local):
    response = local.get("/api/v1/health", headers={"Host": "127.0.0.1:8000", "Origin": "https://evil.example"})
    assert response.status_code == 200  # a cross-site page still cannot read it: no CORS headers are sent
    assert "access-control-allow-origin" not in response.headers


def test_same_origin_rule():
    assert same_origin("http://lab.example", "lab.example", ())
    assert same_origin("https://proxy.lab.example", "127.0.0.1:8000", ("proxy.lab.example",))
    assert same_origin("https://a.ward.example", "127.0.0.1:8000", ("*.ward.example",))
    assert not same_origin("https://evil.example", "127.0.0.1:8000", ("*",))  # "*" never vouches for an origin
    assert not same_origin("https://user@evil.example", "evil.example.", ())
    assert same_origin("http://[::1]:8000", "[::1]:8000", ())
    assert not same_origin("javascript:alert(1)", "127.0.0.1:8000", ())

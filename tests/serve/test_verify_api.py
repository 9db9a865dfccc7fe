"""Verifying through the API and the pages: named users, who may do what, every bad input (nothing written),
the history and CSV with both calls side by side, the worklist and the agreement page."""

from __future__ import annotations

import csv
import io
import re
import sqlite3

import pytest
from PIL import Image

from leukoscope.serve.api_errors import ErrorBody
from leukoscope.serve.security import COOKIE_NAME
from leukoscope.serve.store import Store
from leukoscope.serve.users import Users
from tests.serve.conftest import PASSWORD
from tests.serve.fakes import CLASSES, files

TOKEN = "s3cret-token-for-tests"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
RED, BLUE = (255, 0, 0), (0, 0, 255)  # the fake model calls these Benign and Pre-B, confidently (no flag)


def solid(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buffer, "PNG")
    return buffer.getvalue()


def predict(client, *images: tuple[str, bytes], headers: dict | None = None) -> list[dict]:
    response = client.post("/api/v1/predict", files=files(*images), headers=headers or {})
    assert response.status_code == 200, response.text
    return response.json()["results"]


def login(client, name: str, password: str = PASSWORD, **expect: int) -> object:
    response = client.post("/login", data={"name": name, "password": password, "next": "/verify"},
                           follow_redirects=False)
    assert response.status_code == expect.get("status", 303), response.text
    return response


def verification_count(settings) -> int:
    return sqlite3.connect(settings.db).execute("SELECT COUNT(*) FROM verifications").fetchone()[0]


@pytest.fixture
def alice(make_client, add_user):
    """A server (no token) with a technologist alice logged in."""
    add_user("alice")
    client = make_client()
    login(client, "alice")
    return client


def test_a_verification_without_a_session_is_401_even_on_an_open_server(client, settings):
    (row,) = predict(client, ("a.png", solid(RED)))
    response = client.post(f"/api/v1/predictions/{row['id']}/verifications", json={"label": "Benign"})
    assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")
    assert "named user" in ErrorBody.model_validate(response.json()).detail
    assert verification_count(settings) == 0
    assert client.get("/api/v1/verifications").json()["total"] == 0  # reading stays open, as the history does
    assert client.get("/api/v1/users").status_code == 401  # an admin route: nobody to be an admin
    page = client.get("/verify")
    assert page.status_code == 200 and "leukoscope users add NAME --role technologist" in page.text


def test_a_technologist_verifies_and_a_later_verification_supersedes(alice, settings):
    (row,) = predict(alice, ("a.png", solid(RED)))
    assert row["label"] == "Benign" and row["verification"] is None  # a new field; the others are unchanged
    url = f"/api/v1/predictions/{row['id']}/verifications"
    first = alice.post(url, json={"label": "Pre-B", "comment": "blast-like chromatin"})
    assert first.status_code == 201, first.text
    body = first.json()
    assert body | {"id": 0, "created_at": ""} == {"id": 0, "prediction_id": row["id"], "created_at": "",
                                                  "user": "alice", "label": "Pre-B", "unusable": False,
                                                  "comment": "blast-like chromatin"}
    second = alice.post(url, json={"unusable": True})
    assert second.status_code == 201 and second.json()["label"] is None and second.json()["unusable"] is True
    stored = alice.get(f"/api/v1/predictions/{row['id']}").json()
    assert stored["label"] == "Benign" and stored["verification"] == second.json()  # the model's call stays
    trail = alice.get(url).json()["items"]
    assert [v["id"] for v in trail] == [body["id"], second.json()["id"]]  # both stay, oldest first
    assert alice.get("/api/v1/predictions/00000000-0000-4000-8000-000000000999/verifications").status_code == 404


@pytest.mark.parametrize("body, status, says", [
    ({"label": "Nope"}, 422, "unknown class 'Nope'"),
    ({"label": "Benign", "unusable": True}, 422, "invalid request"),
    ({}, 422, "invalid request"),
    ({"unusable": False}, 422, "invalid request"),
    ({"label": None}, 422, "invalid request"),
    ({"label": "Benign", "comment": "x" * 1001}, 422, "comment"),
    ({"label": "Benign", "by": "someone else"}, 422, "invalid request"),
    ({"label": "Benign", "unusable": 0}, 422, "invalid request"),
    ({"unusable": 1}, 422, "invalid request"),
    ([{"label": "Benign"}], 422, "invalid request"),
])
def test_bad_verifications_are_refused_and_nothing_is_written(alice, settings, body, status, says):
    (row,) = predict(alice, ("a.png", solid(RED)))
    response = alice.post(f"/api/v1/predictions/{row['id']}/verifications", json=body)
    assert response.status_code == status, response.text
    assert says in ErrorBody.model_validate(response.json()).detail
    assert verification_count(settings) == 0


def test_a_comment_that_is_not_text_is_refused(alice, settings):
    (row,) = predict(alice, ("a.png", solid(RED)))
    half_a_character = b'{"label": "Benign", "comment": "x \\ud800 y"}'  # valid JSON, not storable text
    response = alice.post(f"/api/v1/predictions/{row['id']}/verifications", content=half_a_character,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and verification_count(settings) == 0


def test_a_missing_prediction_and_bad_ids_write_nothing(alice, settings):
    missing = "/api/v1/predictions/00000000-0000-4000-8000-000000000999/verifications"
    assert alice.post(missing, json={"label": "Benign"}).status_code == 404
    for bad in ("0", "1", "-1", "9223372036854775808", "x"):
        assert alice.post(f"/api/v1/predictions/{bad}/verifications", json={"label": "Benign"}).status_code == 422
    not_json = alice.post("/api/v1/predictions/00000000-0000-4000-8000-000000000999/verifications", content=b"label=Benign",
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert not_json.status_code == 422
    assert verification_count(settings) == 0


def test_another_site_cannot_verify_with_the_users_cookie(alice, settings):
    (row,) = predict(alice, ("a.png", solid(RED)))
    response = alice.post(f"/api/v1/predictions/{row['id']}/verifications", json={"label": "Benign"},
                          headers={"Origin": "https://evil.example"})
    assert response.status_code == 403 and verification_count(settings) == 0
    same = alice.post(f"/api/v1/predictions/{row['id']}/verifications", json={"label": "Benign"},
                      headers={"Origin": "http://testserver"})
    assert same.status_code == 201


def test_a_technologist_gets_403_on_admin_routes_and_the_token_acts_as_an_admin(make_client, add_user, settings):
    add_user("alice")
    add_user("bob")
    client = make_client(token=TOKEN)
    login(client, "alice")
    assert client.get("/api/v1/users").status_code == 403
    refused = client.post("/api/v1/users/bob/disable")
    assert refused.status_code == 403 and "only an admin" in refused.json()["detail"]
    client.cookies.clear()
    listed = client.get("/api/v1/users", headers=BEARER)
    assert listed.status_code == 200 and [u["name"] for u in listed.json()["items"]] == ["alice", "bob"]
    assert "password_hash" not in listed.text and "argon2" not in listed.text
    (row,) = predict(client, ("a.png", solid(BLUE)), headers=BEARER)
    by_token = client.post(f"/api/v1/predictions/{row['id']}/verifications", json={"label": "Pre-B"}, headers=BEARER)
    assert by_token.status_code == 201 and by_token.json()["user"] == "api-token"
    assert client.post("/api/v1/users/nobody/disable", headers=BEARER).status_code == 404
    assert client.post("/api/v1/users/..%2Fx/disable", headers=BEARER).status_code in (404, 422)


def test_an_admin_user_manages_users_and_a_disabled_users_session_ends(make_client, add_user):
    add_user("root", role="admin")
    add_user("bob")
    admin, bob = make_client(), make_client()
    login(admin, "root")
    login(bob, "bob")
    assert bob.get("/api/v1/health").status_code == 200
    disabled = admin.post("/api/v1/users/bob/disable")
    assert disabled.status_code == 200 and disabled.json()["disabled"] is True
    assert bob.get("/api/v1/health").status_code == 401  # at once
    assert login(bob, "bob", status=403).text.count("bob is disabled") == 1
    assert admin.post("/api/v1/users/BOB/enable").json() == {**disabled.json(), "disabled": False}
    login(bob, "bob")
    assert bob.get("/api/v1/health").status_code == 200


def test_users_disabled_or_given_a_new_password_from_the_cli_lose_their_sessions(alice, settings):
    assert alice.get("/api/v1/health").status_code == 200
    with Store(settings.db) as store:  # what `leukoscope users set-password` does, from another process
        Users(store).set_password("alice", "a brand new secret")
    assert alice.get("/api/v1/health").status_code == 401
    login(alice, "alice", "a brand new secret")
    with Store(settings.db) as store:
        Users(store).set_disabled("alice", True)
    page = alice.get("/history", headers={"Accept": "text/html"}, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/login")


def test_once_users_exist_every_page_needs_a_login(make_client, add_user):
    client = make_client()
    assert client.get("/api/v1/health").status_code == 200  # no token, no users: open, as before
    assert client.get("/login", follow_redirects=False).status_code == 303
    add_user("alice")
    assert client.get("/api/v1/health").status_code == 401
    assert client.get("/verify", headers={"Accept": "text/html"}, follow_redirects=False).headers["location"] == \
        "/login?next=%2Fverify"
    form = client.get("/login?next=/verify")
    assert form.status_code == 200 and 'name="name"' in form.text and 'name="password"' in form.text
    assert 'name="token"' not in form.text  # no token configured: nothing to type there
    wrong = login(client, "alice", "not the password", status=401)
    assert "wrong name or password" in wrong.text and COOKIE_NAME not in wrong.headers.get("set-cookie", "")
    assert "wrong name or password" in login(client, "mallory", status=401).text  # an unknown name reads the same
    right = login(client, "alice")
    assert right.headers["location"] == "/verify" and "HttpOnly" in right.headers["set-cookie"]
    assert "Max-Age=43200" in right.headers["set-cookie"]
    page = client.get("/")
    assert page.status_code == 200 and '<span class="who"' in page.text and ">alice</span>" in page.text
    client.post("/logout")
    assert client.get("/api/v1/health").status_code == 401


def test_password_guesses_are_locked_out_per_name_even_the_right_password(make_client, add_user):
    add_user("alice")
    add_user("bob")
    client = make_client()
    for _ in range(10):
        login(client, "alice", "guess number x", status=401)
    locked = login(client, "alice", status=429)  # the right password too, or the lock would not slow a guesser
    assert "too many wrong passwords" in locked.text and int(locked.headers["retry-after"]) > 0
    login(client, "bob")  # a colleague at the same address is not locked out


def test_the_token_still_logs_in_through_the_form_beside_the_users(make_client, add_user):
    add_user("alice")
    client = make_client(token=TOKEN)
    form = client.get("/login")
    assert 'name="name"' in form.text and 'name="token"' in form.text
    ok = client.post("/login", data={"token": TOKEN, "next": "/"}, follow_redirects=False)
    assert ok.status_code == 303
    assert ">api-token</span>" in client.get("/").text


def test_history_and_csv_show_both_calls_and_filter_disagreements(alice):
    rows = predict(alice, ("agree.png", solid(RED)), ("disagree.png", solid(BLUE)), ("open.png", solid(RED)))
    agree, disagree, _ = (r["id"] for r in rows)
    alice.post(f"/api/v1/predictions/{agree}/verifications", json={"label": "Benign"})
    alice.post(f"/api/v1/predictions/{disagree}/verifications", json={"label": "Pro-B", "comment": "=cmd|x"})

    def ids(**params: str) -> list[int]:
        return [r["id"] for r in alice.get("/api/v1/predictions", params=params).json()["items"]]

    assert ids(disagrees="true") == [disagree] and ids(disagrees="false") == [agree]
    assert len(ids(verified="false")) == 1 and len(ids(verified="true")) == 2
    table = list(csv.DictReader(io.StringIO(alice.get("/api/v1/predictions.csv").text)))
    by_name = {r["file_name"]: r for r in table}
    assert by_name["disagree.png"]["label"] == "Pre-B" and by_name["disagree.png"]["verified_label"] == "Pro-B"
    assert by_name["disagree.png"]["verified_by"] == "alice" and by_name["disagree.png"]["agrees_with_model"] == "0"
    assert by_name["disagree.png"]["verified_comment"] == "'=cmd|x"  # a formula stays text
    assert by_name["agree.png"]["agrees_with_model"] == "1" and by_name["open.png"]["verified_label"] == ""
    assert list(table[0])[:20] == ["id", "created_at", "sample_id", "file_name", "sha256", "model_version", "status",
                                   "label", "confidence", *[f"p_{c}" for c in CLASSES], "review", "review_codes",
                                   "review_reasons", "ood_score", "width", "height", "probabilities"]  # as before
    only = list(csv.DictReader(io.StringIO(alice.get("/api/v1/predictions.csv", params={"disagrees": "true"}).text)))
    assert [r["file_name"] for r in only] == ["disagree.png"]
    page = alice.get("/history", params={"verified": "disagrees"}).text
    assert "disagree.png" in page and "agree.png" not in page.replace("disagree.png", "")
    assert "≠ model" in page and "by alice" in page and ">Pro-B</span>" in page
    link = re.search(r'id="history-csv"\s+href="([^"]+)"', page).group(1).replace("&amp;", "&")
    assert "disagrees=true" in link
    assert alice.get("/history", params={"verified": "maybe"}).status_code == 422


def test_the_verification_list_filters_and_pages(alice):
    rows = predict(alice, ("a.png", solid(RED)), ("b.png", solid(BLUE)))
    for row, label in ((rows[0], "Benign"), (rows[1], "Benign"), (rows[1], "Pre-B")):
        assert alice.post(f"/api/v1/predictions/{row['id']}/verifications", json={"label": label}).status_code == 201
    listing = alice.get("/api/v1/verifications").json()
    assert listing["total"] == 3 and listing["pages"] == 1
    assert [(e["label"], e["model_label"], e["agrees"], e["latest"]) for e in listing["items"]] == [
        ("Pre-B", "Pre-B", True, True), ("Benign", "Pre-B", False, False), ("Benign", "Benign", True, True)]

    def total(**params: str) -> int:
        response = alice.get("/api/v1/verifications", params=params)
        assert response.status_code == 200, response.text
        return response.json()["total"]

    assert total(user="alice") == 3 and total(user="bob") == 0
    assert total(disagrees="true") == 1 and total(latest="true") == 2
    assert total(since="2000-01-01T00:00:00Z") == 3 and total(until="2000-01-01") == 0  # a date: UTC midnight
    assert total(since="9999-12-31T23:59:60+14:00") == 0  # a leap second, an offset
    assert total(since="0001-01-01T00:00:00+01:00") == 3  # before year 1 in UTC: the calendar's edge, not a 500
    assert total(until="9999-12-31T23:59:59.123456789-01:00") == 3 and total(since="0000-01-01") == 3
    assert alice.get("/api/v1/verifications", params={"per_page": 2, "page": 2}).json()["items"][0]["label"] == "Benign"
    for bad in ({"since": "yesterday"}, {"until": "0.5"}, {"until": ""}, {"since": "2026-01-31T08:00:00"},
                {"since": "2026-02-30"}, {"until": "2026-01-01T24:00:00Z"}, {"per_page": 0}, {"disagrees": "maybe"},
                {"user": "x" * 65}):
        response = alice.get("/api/v1/verifications", params=bad)
        assert response.status_code == 422, bad
        assert ErrorBody.model_validate(response.json()).errors[0].loc[-1] in bad


def test_the_worklist_api_and_page(alice):
    rows = predict(alice, ("sure.png", solid(RED)), ("unsure-1.png", solid((120, 120, 120))),
                   ("unsure-2.png", solid((125, 120, 120))))
    assert [r["review"] for r in rows] == [False, True, True]
    work = alice.get("/api/v1/worklist").json()
    assert work["total"] == 3
    assert [r["file_name"] for r in work["items"]] == ["unsure-2.png", "unsure-1.png", "sure.png"]
    first = alice.get("/api/v1/worklist", params={"limit": 1}).json()["items"][0]
    rest = alice.get("/api/v1/worklist", params={"after_id": first["id"], "after_flagged": "true"}).json()["items"]
    assert [r["file_name"] for r in rest] == ["unsure-1.png", "sure.png"]
    alice.post(f"/api/v1/predictions/{first['id']}/verifications", json={"unusable": True})
    assert alice.get("/api/v1/worklist").json()["total"] == 2
    assert alice.get("/api/v1/worklist", params={"limit": 101}).status_code == 422
    page = alice.get("/verify")
    assert page.status_code == 200 and "<script>" not in page.text
    assert '<script src="/static/verify.js" defer></script>' in page.text and 'id="gradcam-panel"' in page.text
    keys = re.findall(r"<kbd>(\d)</kbd> ([^<,]+?)(?:,|\s*\(|</)", page.text.split('class="muted small"><kbd>')[1])
    assert [name.strip() for _, name in keys] == list(CLASSES)  # 1-4 in the model's class order, on screen
    assert alice.get("/static/verify.js").status_code == 200


def test_the_agreement_page_counts_per_model_version(alice):
    rows = predict(alice, ("a.png", solid(RED)), ("b.png", solid(BLUE)), ("c.png", solid(RED)))
    alice.post(f"/api/v1/predictions/{rows[0]['id']}/verifications", json={"label": "Benign"})
    alice.post(f"/api/v1/predictions/{rows[1]['id']}/verifications", json={"label": "Benign"})
    page = alice.get("/agreement")
    assert page.status_code == 200 and "<svg" in page.text and "<script" not in page.text.split("<main")[1]
    assert "3 predictions, 0 flagged" in page.text and "agreement <strong>50.0%</strong>" in page.text
    assert "serving now" in page.text


def test_the_schema_declares_the_verification_routes_and_their_errors(client):
    schema = client.get("/openapi.json").json()
    post = schema["paths"]["/api/v1/predictions/{prediction_id}/verifications"]["post"]
    assert {"201", "401", "403", "404", "422"} <= set(post["responses"])
    error_body = {"$ref": "#/components/schemas/ErrorBody"}
    assert post["responses"]["404"]["content"]["application/json"]["schema"] == error_body
    assert schema["components"]["schemas"]["VerifyAsClass"]["properties"]["label"]["enum"] == list(CLASSES)
    for path in ("/api/v1/verifications", "/api/v1/worklist", "/api/v1/users", "/api/v1/users/{name}/disable"):
        assert path in schema["paths"], path
    assert "403" in schema["paths"]["/api/v1/users"]["get"]["responses"]

"""Clinics are isolated, tested rather than assumed: a user and a token of clinic A walk EVERY route of the
OpenAPI schema (read from app.openapi(), not listed by hand) and every HTML page against clinic B's
predictions, samples, images, thumbnails, Grad-CAMs, CSV export, verifications and users. Every route that
names one of B's things answers 404 (never 403, never 200), and no answer, list or page carries any of B's
ids, names, hashes or its model: 0 leaks. On SQLite and on PostgreSQL.

Also: each clinic predicts with its own package and every prediction records which; a removed clinic's
token answers 401; the shared token and an open workstation act in the implicit clinic, as before.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from leukoscope.serve import Settings, create_app
from leukoscope.serve.clinics import Clinics
from leukoscope.serve.store import Store
from leukoscope.serve.tokens import ApiTokens
from leukoscope.serve.users import Users
from tests.serve.conftest import PASSWORD
from tests.serve.fakes import FakeCells, FakePredictor, fake_gradcam, files

SHARED = "shared-token-for-clinic-tests"


class ClinicModel(FakePredictor):
    """A clinic's own package (a fake one): the same classes, another name, so another model_version."""

    def __init__(self, package: str) -> None:
        super().__init__()
        self.info = {**self.info, "name": f"model-of-{Path(package).name}"}


def png(colour: tuple[int, int, int], size: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, "PNG")
    return buffer.getvalue()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def network(db_url: str, tmp_path: Path) -> dict[str, Any]:
    """Clinics north (A) and south (B), each with an admin and a token; south predicts with its own package."""
    package = tmp_path / "south-adapted"
    package.mkdir()
    (package / "model.json").write_text("{}")
    with Store(db_url) as store:
        clinics, users, tokens = Clinics(store), Users(store), ApiTokens(store)
        north, south = clinics.add("north"), clinics.add("south")
        clinics.set_model("south", str(package))
        users.add("nadia", "admin", PASSWORD, north.id)
        users.add("samuel.south", "admin", PASSWORD, south.id)
        users.add("net", "network-admin", PASSWORD, north.id)
        _, a_token = tokens.create(north, "north-lims")
        _, b_token = tokens.create(south, "south-lims")
    settings = Settings(db=db_url, warmup=False, allowed_hosts=("testserver",), token=SHARED)
    app = create_app(settings, FakePredictor(), gradcam=fake_gradcam, loader=ClinicModel, cells=FakeCells())
    with TestClient(app) as client:
        yield {"app": app, "client": client, "a_token": a_token, "b_token": b_token, "db": db_url,
               "package": str(package.resolve())}


def seed_south(client: TestClient, b_token: str) -> dict[str, Any]:
    """B's data, made through the API as B: two predictions in one sample, a verification; what must never
    reach A (every value below is searched for in A's answers)."""
    sample = "south-sample-7f3a"
    made = client.post("/api/v1/predict", files=files(("south-secret-1.png", png((250, 10, 10))),
                                                      ("south-secret-2.png", png((10, 10, 250)))),
                       data={"sample_id": sample}, headers=bearer(b_token))
    assert made.status_code == 200, made.text
    rows = made.json()["results"]
    verified = client.post(f"/api/v1/predictions/{rows[0]['id']}/verifications", json={"label": "Benign",
                           "comment": "south-comment-x"}, headers=bearer(b_token))
    assert verified.status_code == 201, verified.text
    cells = client.get(f"/api/v1/samples/{sample}/cells", headers=bearer(b_token))  # computed as B, with B's model
    assert cells.status_code == 200 and cells.json()["n_cells"] == 4, cells.text
    assert all(c["model_version"].startswith("model-of-south-adapted@") for c in cells.json()["cells"])
    cell_ids = [c["id"] for c in cells.json()["cells"]]
    cell_verified = client.post(f"/api/v1/cells/{cell_ids[0]}/verifications", json={"label": "Pre-B",
                                "comment": "south-cell-comment"}, headers=bearer(b_token))
    assert cell_verified.status_code == 201, cell_verified.text
    return {"prediction_id": rows[0]["id"], "cell_id": cell_ids[0], "sample_id": sample, "name": "samuel.south",
            "rows": rows, "cell_ids": cell_ids,
            "secrets": {rows[0]["id"], rows[1]["id"], verified.json()["id"], sample, "south-secret-1",
                        "south-secret-2", rows[0]["sha256"], rows[1]["sha256"], "south-comment-x", "south-lims",
                        "samuel.south", rows[0]["model_version"], "model-of-south-adapted", *cell_ids,
                        cell_verified.json()["id"], "south-cell-comment"}}


PATH_VALUES = ("prediction_id", "sample_id", "name", "cell_id")  # every path parameter a route may have, filled with B's
QUERY_VALUES = {"sample_id": "sample_id", "user": "name", "after_id": "prediction_id"}
JSON_BODIES = {"/api/v1/clinic/model": {"id": "default"}}  # other JSON routes take a verification


def call(client: TestClient, method: str, path: str, operation: dict[str, Any], b: dict[str, Any],
         headers: dict[str, str]) -> tuple[Any, set[str]]:
    """One request of an OpenAPI operation, with B's values wherever the route takes an id, name or sample;
    returns the response and the values sent."""
    params, sent = {}, set()
    for parameter in operation.get("parameters", []):
        if parameter["in"] == "path":
            if parameter["name"] not in PATH_VALUES:
                pytest.fail(f"{method.upper()} {path}: path parameter {parameter['name']!r} has no clinic-B value "
                            "in this test: add one, so the new route is checked too")
            path = path.replace("{" + parameter["name"] + "}", str(b[parameter["name"]]))
            sent.add(str(b[parameter["name"]]))
        elif parameter["in"] == "query" and parameter["name"] in QUERY_VALUES:
            params[parameter["name"]] = b[QUERY_VALUES[parameter["name"]]]
            sent.add(str(params[parameter["name"]]))
    content = operation.get("requestBody", {}).get("content", {})
    kwargs: dict[str, Any] = {}
    if "multipart/form-data" in content:
        kwargs = {"files": files(("north-upload.png", png((10, 200, 10))))}
    elif "application/json" in content:  # a valid body: the route must then refuse B's ids, not the body
        kwargs = {"json": JSON_BODIES.get(path, {"unusable": True})}
    return client.request(method.upper(), path, params=params, headers=headers, **kwargs), sent


def leaks(response: Any, secrets: set[str]) -> list[str]:
    text = response.content.decode("utf-8", "replace") + json.dumps(dict(response.headers))
    return sorted(s for s in secrets if s.lower() in text.lower())


def all_routes(routes: list[Any], prefix: str = "") -> list[tuple[str, set[str]]]:
    """(path, methods) of every route, through included routers (FastAPI >= 0.16x keeps them wrapped)."""
    found = []
    for route in routes:
        if hasattr(route, "original_router"):
            found += all_routes(route.original_router.routes, prefix + route.include_context.prefix)
        elif getattr(route, "methods", None):
            found.append((prefix + route.path, set(route.methods)))
    return found


def pages(app: Any) -> list[str]:
    """Every HTML page: the app's GET routes outside the OpenAPI schema (static files aside)."""
    schema_paths = set(app.openapi()["paths"])
    found = [path for path, methods in all_routes(app.routes)
             if "GET" in methods and path not in schema_paths and "{" not in path]
    assert {"/", "/history", "/verify", "/agreement", "/cells"} <= set(found), found
    return found


def session_of(client: TestClient, name: str) -> dict[str, str]:
    """A Cookie header of `name`'s login session (the client itself keeps no cookie: one walk per identity)."""
    response = client.post("/login", data={"name": name, "password": PASSWORD}, follow_redirects=False)
    assert response.status_code == 303, response.text
    session = client.cookies.get("leukoscope_session")
    client.cookies.clear()
    return {"Cookie": f"leukoscope_session={session}"}


def test_clinic_a_sees_nothing_of_clinic_b_on_any_route_or_page(network: dict[str, Any]):
    client, app = network["client"], network["app"]
    b = seed_south(client, network["b_token"])
    # the ids are real: B and the network admin reach them (so a 404 for A means isolation, not a typo)
    assert client.get(f"/api/v1/predictions/{b['prediction_id']}", headers=bearer(network["b_token"])).status_code == 200
    as_user = session_of(client, "nadia")
    walked, problems = 0, []
    operations = [(path, method, op) for path, item in app.openapi()["paths"].items() for method, op in item.items()]
    assert len(operations) >= 15, operations
    for who, headers in (("user nadia", as_user), ("token north-lims", bearer(network["a_token"]))):
        for path, method, operation in operations:
            response, sent = call(client, method, path, operation, b, headers)
            walked += 1
            names_b = "{" in path or any(p.get("name") == "after_id" for p in operation.get("parameters", []))
            expected = (404,) if names_b else (200, 201)
            if response.status_code not in expected:
                problems.append(f"{who}: {method.upper()} {path} -> {response.status_code} {response.text[:120]}")
            if found := leaks(response, b["secrets"] - sent):  # echoing what A itself sent reveals nothing
                problems.append(f"{who}: {method.upper()} {path} leaks {found}")
        for page in pages(app):
            response = client.get(page, params={"sample_id": b["sample_id"]}, headers=headers)
            walked += 1
            if response.status_code != 200:
                problems.append(f"{who}: page {page} -> {response.status_code}")
            if found := leaks(response, b["secrets"] - {b["sample_id"]}):
                problems.append(f"{who}: page {page} leaks {found}")
    assert not problems, "\n".join(problems)
    assert walked >= 40
    with Store(network["db"]) as store:  # nothing of B's was changed by A's attempts
        assert store.scalar("SELECT COUNT(*) FROM verifications") == 1
        assert store.scalar("SELECT COUNT(*) FROM cell_verifications") == 1
        assert store.scalar("SELECT COUNT(*) FROM cells WHERE clinic_id = :c", {"c": Clinics(store).get("south").id}) == 4
        assert not Users(store).get("samuel.south").disabled
        assert store.scalar("SELECT COUNT(*) FROM predictions WHERE clinic_id = :c",
                            {"c": Clinics(store).get("south").id}) == 2
    seen = client.get("/api/v1/predictions", params={"per_page": 500}, headers=session_of(client, "net")).json()["items"]
    assert {r["id"] for r in b["rows"]} <= {r["id"] for r in seen}  # a network admin sees every clinic


def test_each_clinic_predicts_with_its_own_package_and_every_row_says_which(network: dict[str, Any]):
    client = network["client"]
    north = client.post("/api/v1/predict", files=files(("n.png", png((200, 30, 30)))),
                        headers=bearer(network["a_token"])).json()["results"][0]
    south = client.post("/api/v1/predict", files=files(("s.png", png((200, 30, 30)))),
                        headers=bearer(network["b_token"])).json()["results"][0]
    shared = client.post("/api/v1/predict", files=files(("d.png", png((200, 30, 30)))),
                         headers=bearer(SHARED)).json()["results"][0]
    assert north["model_package"] == shared["model_package"] == "bundled"
    assert north["model_version"].startswith("fake-model@")
    assert south["model_package"] == network["package"] and south["model_version"].startswith("model-of-south-adapted@")
    card = client.get("/api/v1/model", headers=bearer(network["b_token"])).json()
    assert card["model_version"] == south["model_version"] and card["model_package"] == network["package"]
    registry = network["app"].state.ctx.service.models
    assert len(registry.loaded()) == 2  # the default and south's, each loaded once
    with Store(network["db"]) as store:
        stored = store.query("SELECT model_package, model_version, clinic_id FROM predictions ORDER BY id")
    assert [r["model_package"] for r in stored] == ["bundled", network["package"], "bundled"]
    assert stored[2]["clinic_id"] == 1  # the shared token acts in the implicit clinic


def test_a_removed_clinic_or_revoked_token_answers_401_and_its_users_cannot_log_in(network: dict[str, Any]):
    client = network["client"]
    assert client.get("/api/v1/health", headers=bearer(network["b_token"])).status_code == 200
    with Store(network["db"]) as store:
        Clinics(store).remove("south")
        ApiTokens(store).revoke("north-lims")
    for token in (network["b_token"], network["a_token"], "lks_" + "x" * 43):
        response = client.get("/api/v1/health", headers=bearer(token))
        assert response.status_code == 401 and set(response.json()) == {"detail"}
    assert client.post("/login", data={"name": "samuel.south", "password": PASSWORD}, follow_redirects=False).status_code == 403
    assert client.get("/api/v1/health", headers=bearer(SHARED)).status_code == 200  # the shared token still works


def test_clinic_names_and_duplicates_are_refused_in_one_line(tmp_path: Path):
    from leukoscope.errors import DataError, UsageError

    with Store(tmp_path / "db.sqlite") as store:
        clinics = Clinics(store)
        clinics.add("east")
        with pytest.raises(DataError, match="a clinic named 'east' already exists"):
            clinics.add("EAST")
        with pytest.raises(UsageError, match="invalid clinic name"):
            clinics.add("../x")
        with pytest.raises(UsageError, match=re.escape("unknown clinic 'west'")):
            clinics.require("west")
        with pytest.raises(UsageError, match="cannot be removed"):
            clinics.remove("default")
        with pytest.raises(UsageError, match="not a model package"):
            clinics.set_model("east", str(tmp_path))
        user = Users(store).add("eve", "technologist", PASSWORD, clinics.get("east").id)
        with pytest.raises(DataError, match="already exists"):
            Users(store).add("Eve", "technologist", PASSWORD)
        assert user.clinic == "east"
        _, secret = ApiTokens(store).create(clinics.get("east"))
        assert secret.startswith("lks_") and len(secret) > 40
        stored = dict(store.query("SELECT * FROM api_tokens")[0])
        assert secret not in json.dumps(stored) and stored["token_hash"] == hashlib.sha256(secret.encode()).hexdigest()
        assert ApiTokens(store).principal(secret).clinic_id == clinics.get("east").id


def test_a_single_workstation_needs_no_clinic(client):
    """No token, no users: the upload page and API work as before, in the implicit clinic."""
    made = client.post("/api/v1/predict", files=files(("a.png", png((30, 30, 200)))))
    assert made.status_code == 200
    row = made.json()["results"][0]
    assert re.fullmatch(r"[0-9a-f-]{36}", row["id"]) and row["model_package"] == "bundled"
    assert client.get(f"/api/v1/predictions/{row['id']}").status_code == 200
    assert client.get("/api/v1/predictions").json()["total"] == 1
    assert client.get("/history").status_code == 200


def test_the_login_form_takes_a_clinic_token_and_its_session_ends_with_the_token(network: dict[str, Any]):
    client = network["client"]
    seed_south(client, network["b_token"])
    response = client.post("/login", data={"token": network["a_token"]}, follow_redirects=False)
    assert response.status_code == 303
    cookie = {"Cookie": f"leukoscope_session={client.cookies.get('leukoscope_session')}"}
    client.cookies.clear()
    assert client.get("/api/v1/predictions", headers=cookie).json()["total"] == 0  # north's: none yet
    assert client.post("/login", data={"token": "lks_wrong"}, follow_redirects=False).status_code == 401
    with Store(network["db"]) as store:
        ApiTokens(store).revoke("north-lims")
    assert client.get("/api/v1/predictions", headers=cookie).status_code == 401

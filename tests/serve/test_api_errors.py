"""Item 7 of issue #11: what a schema fuzzer found, each case pinned (tests/serve/test_fuzz.py runs the fuzzer)."""

from __future__ import annotations

import pytest

from leukoscope.serve.api_errors import ErrorBody
from leukoscope.serve.store import Store
from tests.serve.fakes import CLASSES, files
from tests.serve.test_api import jpeg

HUGE = ["9223372036854775808", "99999999999999999999"]  # past SQLite's INTEGER (2**63 - 1)


@pytest.mark.parametrize("path", [
    "/api/v1/predictions?page={n}", "/history?page={n}", "/api/v1/predictions/{n}",
    "/api/v1/predictions/{n}/thumbnail", "/api/v1/predictions/{n}/gradcam", "/api/v1/predictions/{n}/image",
])
@pytest.mark.parametrize("n", [*HUGE, "0", "-1"])
def test_numbers_out_of_range_are_422_not_500(client, path, n):
    response = client.get(path.format(n=n))
    assert response.status_code == 422, response.text
    ErrorBody.model_validate(response.json())
    assert response.json()["errors"][0]["loc"][-1] in ("page", "prediction_id")


def test_a_page_far_past_the_end_is_422_and_an_unknown_id_404(client):
    assert client.get("/api/v1/predictions", params={"page": 200000000000000000}).status_code == 422
    assert client.get("/history", params={"page": 200000000000000000}).status_code == 422
    assert client.get("/api/v1/predictions", params={"page": 10**9}).json()["items"] == []
    assert client.get("/api/v1/predictions/200000000000000000").status_code == 422  # integer ids are gone (UUIDs)
    assert client.get("/api/v1/predictions/00000000-0000-4000-8000-000000000999").status_code == 404


def test_the_store_never_binds_an_overflowing_number(tmp_path):
    with Store(tmp_path / "db.sqlite").open() as store:
        assert store.get(2**63) is None and store.get(0) is None
        assert store.page(2 * 10**17, 10**6).items == []


@pytest.mark.parametrize("sample_id, fallback", [
    ("€", "leukoscope-_.csv"), ("a\r\nSet-Cookie: x=1", "leukoscope-a__Set-Cookie__x_1.csv"),
    ('a"b', "leukoscope-a_b.csv"), ("plain-id_1", "leukoscope-plain-id_1.csv"),
])
def test_csv_file_names_are_safe_for_any_sample_id(client, sample_id, fallback):
    response = client.get("/api/v1/predictions.csv", params={"sample_id": sample_id})
    assert response.status_code == 200
    assert "set-cookie" not in response.headers
    disposition = response.headers["content-disposition"]
    assert disposition.startswith(f'attachment; filename="{fallback}"; filename*=UTF-8\'\'')
    assert disposition.isascii() and "\r" not in disposition and "\n" not in disposition
    assert disposition.count('"') == 2


def test_every_error_has_the_one_documented_shape(client, image_bytes):
    answers = [
        client.get("/api/v1/predictions", params={"per_page": 0}),  # 422 from validation
        client.get("/api/v1/predictions", params={"review": "maybe"}),
        client.get("/api/v1/predictions/00000000-0000-4000-8000-000000000999"),  # 404 from the service
        client.get("/api/v1/nowhere"),  # 404 from routing
        client.post("/api/v1/predict", content=b"x", headers={"Content-Type": "text/plain"}),  # 415
        client.post("/api/v1/predict", files=files(("a.txt", b"not an image"))),  # 422, per-file results kept
        client.options("/api/v1/health"),  # 405
    ]
    assert [r.status_code for r in answers] == [422, 422, 404, 404, 415, 422, 405]
    for response in answers:
        body = ErrorBody.model_validate(response.json())
        assert body.detail and isinstance(response.json()["detail"], str)
    assert answers[5].json()["results"][0]["ok"] is False


def test_the_schema_declares_the_error_shape_for_every_error_status(client):
    schema = client.get("/openapi.json").json()
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    operations = {(m.upper(), p): op for p, item in schema["paths"].items() for m, op in item.items()}
    for op in operations.values():
        for status, response in op["responses"].items():
            if status[0] in "45":
                assert response["content"]["application/json"]["schema"] == error_ref, (op["operationId"], status)
        assert {"400", "401", "429", "500"} <= set(op["responses"])
    assert {"403", "413", "415", "422", "503"} <= set(operations["POST", "/api/v1/predict"]["responses"])
    for path in ("/api/v1/predictions/{prediction_id}", "/api/v1/predictions/{prediction_id}/gradcam",
                 "/api/v1/predictions/{prediction_id}/thumbnail", "/api/v1/samples/{sample_id}"):
        assert "404" in operations["GET", path]["responses"], path
    assert "503" in operations["GET", "/api/v1/predictions/{prediction_id}/gradcam"]["responses"]
    assert "HTTPValidationError" not in schema.get("components", {}).get("schemas", {}) or all(
        "HTTPValidationError" not in str(op) for op in operations.values())
    target = next(p for p in operations["GET", "/api/v1/predictions/{prediction_id}/gradcam"]["parameters"]
                  if p["name"] == "target")
    assert target["schema"]["anyOf"][0]["enum"] == list(CLASSES)


@pytest.mark.parametrize("method, path, allow", [
    ("OPTIONS", "/api/v1/health", "GET, HEAD"), ("DELETE", "/api/v1/predictions/00000000-0000-4000-8000-000000000999", "GET"),
    ("PUT", "/api/v1/predict", "POST"), ("OPTIONS", "/api/v1/predictions", "GET"),
])
def test_method_not_allowed_lists_the_methods_the_path_serves(client, method, path, allow):
    response = client.request(method, path)
    assert response.status_code == 405 and response.headers["allow"] == allow
    assert response.json() == {"detail": "method not allowed"}


def test_a_wrong_sample_id_in_an_upload_is_422(client, image_bytes):
    response = client.post("/api/v1/predict", files=files(("a.jpg", jpeg(image_bytes))),
                           data={"sample_id": "x" * 65})
    assert response.status_code == 422 and "sample_id" in response.json()["detail"]
    empty = client.post("/api/v1/predict", files=files(("a.jpg", jpeg(image_bytes))), data={"sample_id": ""})
    assert empty.status_code == 200  # an empty field (the upload form's) means "no sample id given"

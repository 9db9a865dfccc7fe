"""The JSON API: happy paths, every bad input, history, CSV, Grad-CAM, back-pressure, error hygiene."""

from __future__ import annotations

import csv
import io
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from leukoscope.serve.store import schema_version
from tests.serve.fakes import CLASSES, FakePredictor, files, png_bomb


def jpeg(image_bytes, seed: int = 0, size: int = 64) -> bytes:
    return image_bytes(seed=seed, size=size)


def test_health_model_and_openapi(client):
    health = client.get("/api/v1/health").json()
    assert health["status"] == "ok" and health["schema_version"] == schema_version() and health["predictions"] == 0
    assert health["model_version"].startswith("fake-model@")
    card = client.get("/api/v1/model").json()
    assert card["classes"] == list(CLASSES) and card["card"]["metrics"]["accuracy"] == 0.99
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/api/v1/predict"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body
    docs = client.get("/docs")  # Swagger UI from the app's own files; its inline bootstrap script needs its own CSP
    csp = docs.headers["content-security-policy"]
    assert docs.status_code == 200 and "'unsafe-inline'" in csp and "http" not in csp and "cdn" not in docs.text
    assert '/docs-static/swagger-ui-bundle.js' in docs.text
    script = client.get("/docs-static/swagger-ui-bundle.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "'unsafe-inline'" not in client.get("/").headers["content-security-policy"]  # only /docs relaxes it


def test_predict_one_file_is_stored_before_the_answer(client, image_bytes, settings):
    response = client.post("/api/v1/predict", files=files(("cell.jpg", jpeg(image_bytes))))
    assert response.status_code == 200, response.text
    body = response.json()
    (result,) = body["results"]
    assert result["ok"] and result["error"] is None and result["label"] in CLASSES
    assert abs(sum(result["probabilities"].values()) - 1) < 1e-6
    assert result["width"] == 64 and len(result["sha256"]) == 64
    assert body["summary"]["images"] == 1
    stored = client.get(result["links"]["self"]).json()
    assert stored["file_name"] == "cell.jpg" and stored["label"] == result["label"]
    import sqlite3

    assert sqlite3.connect(settings.db).execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 1


def test_predict_many_files_with_sample_summary(client, image_bytes):
    uploads = [("a.jpg", jpeg(image_bytes, 1)), ("b.png", image_bytes(seed=2, fmt="PNG")),
               ("c.bmp", image_bytes(seed=3, fmt="BMP")), ("d.tif", image_bytes(seed=4, mode="L", fmt="TIFF"))]
    response = client.post("/api/v1/predict", files=files(*uploads), data={"sample_id": "patient-7"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["file_name"] for r in body["results"]] == ["a.jpg", "b.png", "c.bmp", "d.tif"]
    assert all(r["ok"] for r in body["results"])
    summary = body["summary"]
    assert summary["sample_id"] == body["sample_id"] == "patient-7"
    assert summary["images"] == 4 and sum(summary["counts"].values()) == 4
    assert summary["label"] in CLASSES
    again = client.get("/api/v1/samples/patient-7").json()
    assert again["counts"] == summary["counts"] and again["label"] == summary["label"]
    assert client.get("/api/v1/samples/nope").status_code == 404


def test_one_bad_file_among_good_ones_is_a_per_file_error(client, image_bytes):
    good = jpeg(image_bytes)
    uploads = [("good.jpg", good), ("notes.txt", b"hello, not an image"), ("cut.jpg", good[: len(good) // 2]),
               ("bomb.png", png_bomb()), ("good2.jpg", jpeg(image_bytes, 5))]
    response = client.post("/api/v1/predict", files=files(*uploads))
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["ok"] for r in results] == [True, False, False, False, True]
    assert "not an image" in results[1]["error"]
    assert "truncated" in results[2]["error"]
    assert "decompression bomb" in results[3]["error"]
    assert response.json()["summary"]["failed"] == 3
    assert client.get("/api/v1/predictions").json()["total"] == 2


@pytest.mark.parametrize("name, data, message", [
    ("empty.jpg", b"", "empty file"),
    ("notes.txt", b"just some text\n" * 10, "not an image"),
    ("bomb.png", png_bomb(), "decompression bomb"),
])
def test_a_single_bad_file_is_422_with_a_clear_message(client, name, data, message):
    response = client.post("/api/v1/predict", files=files((name, data)))
    assert response.status_code == 422
    body = response.json()
    assert message in body["detail"] and message in body["results"][0]["error"]
    assert client.get("/api/v1/predictions").json()["total"] == 0


def test_truncated_jpeg_is_422(client, image_bytes):
    data = jpeg(image_bytes, size=128)
    response = client.post("/api/v1/predict", files=files(("cut.jpg", data[: len(data) // 2])))
    assert response.status_code == 422 and "truncated" in response.json()["detail"]


def test_unsupported_format_is_refused_even_if_pillow_reads_it(client):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "GIF")
    response = client.post("/api/v1/predict", files=files(("x.gif", buffer.getvalue())))
    assert response.status_code == 422 and "unsupported image format GIF" in response.json()["detail"]


def test_content_is_sniffed_not_the_name_or_type(client, image_bytes):
    png = image_bytes(fmt="PNG")
    ok = client.post("/api/v1/predict", files=files(("report.txt", png), content_type="text/plain"))
    assert ok.status_code == 200 and ok.json()["results"][0]["ok"]
    lie = client.post("/api/v1/predict", files=files(("cell.jpg", b"MZ\x90\x00 not a jpeg"), content_type="image/jpeg"))
    assert lie.status_code == 422


def test_file_names_are_never_paths(client, image_bytes, settings):
    response = client.post("/api/v1/predict", files=files(("../../../etc/evil.jpg", jpeg(image_bytes)),
                                                          ("C:\\Windows\\x.jpg", jpeg(image_bytes, 2))))
    names = [r["file_name"] for r in response.json()["results"]]
    assert names == ["evil.jpg", "x.jpg"]
    assert sorted(p.name for p in settings.data_dir.iterdir()) <= ["leukoscope.db", "leukoscope.db-shm",
                                                                    "leukoscope.db-wal"]


def test_empty_upload_and_wrong_content_type(client):
    no_files = client.post("/api/v1/predict", data={"sample_id": "x"}, files={"other": ("a", b"1")})
    assert no_files.status_code == 422 and "no files uploaded" in no_files.json()["detail"]
    no_body = client.post("/api/v1/predict")
    assert no_body.status_code == 415 and "multipart/form-data" in no_body.json()["detail"]
    bad_sample = client.post("/api/v1/predict", files=files(("a.jpg", b"x")), data={"sample_id": "../x"})
    assert bad_sample.status_code == 422


def test_oversized_file_is_413(make_client, image_bytes):
    client = make_client(max_file_bytes=5_000)
    big = jpeg(image_bytes, size=256)
    assert len(big) > 5_000
    response = client.post("/api/v1/predict", files=files(("small.jpg", jpeg(image_bytes)), ("big.jpg", big)))
    assert response.status_code == 413
    assert "big.jpg" in response.json()["detail"] and "per file" in response.json()["detail"]
    assert client.get("/api/v1/predictions").json()["total"] == 0


def test_too_many_files_is_413(make_client, image_bytes):
    client = make_client(max_files=3)
    response = client.post("/api/v1/predict", files=files(*[(f"{i}.jpg", jpeg(image_bytes, i)) for i in range(4)]))
    assert response.status_code == 413 and "too many files" in response.json()["detail"]


def test_total_request_size_is_413_declared_or_streamed(make_client, image_bytes):
    client = make_client(max_request_bytes=30_000)
    payload = [(f"{i}.jpg", jpeg(image_bytes, i, size=128)) for i in range(6)]
    assert sum(len(d) for _, d in payload) > 30_000
    declared = client.post("/api/v1/predict", files=files(*payload))
    assert declared.status_code == 413 and "request too large" in declared.json()["detail"]

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        for _ in range(100):
            yield b"x" * 1000

    streamed = client.post("/api/v1/predict", content=chunks(),
                           headers={"Content-Type": "multipart/form-data; boundary=zzz"})
    assert streamed.status_code == 413 and "request too large" in streamed.json()["detail"]


def test_history_pagination_filters_and_validation(client, image_bytes):
    for i in range(5):
        client.post("/api/v1/predict", files=files((f"{i}.jpg", jpeg(image_bytes, i))))
    page = client.get("/api/v1/predictions", params={"per_page": 2}).json()
    assert page["total"] == 5 and page["pages"] == 3 and len(page["items"]) == 2
    assert [r["file_name"] for r in page["items"]] == ["4.jpg", "3.jpg"]
    label = page["items"][0]["label"]
    filtered = client.get("/api/v1/predictions", params={"label": label}).json()
    assert filtered["total"] >= 1 and all(r["label"] == label for r in filtered["items"])
    flagged = client.get("/api/v1/predictions", params={"review": "true"}).json()
    unflagged = client.get("/api/v1/predictions", params={"review": "false"}).json()
    assert flagged["total"] + unflagged["total"] == 5
    assert client.get("/api/v1/predictions", params={"per_page": 0}).status_code == 422
    assert client.get("/api/v1/predictions", params={"page": "x"}).status_code == 422


def test_csv_export_reads_back_and_neutralises_formulas(client, image_bytes):
    client.post("/api/v1/predict", files=files(("=HYPERLINK(1).jpg", jpeg(image_bytes)), ("b.jpg", jpeg(image_bytes, 3))))
    response = client.get("/api/v1/predictions.csv")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 2
    assert {f"p_{c}" for c in CLASSES} <= set(rows[0])
    assert rows[1]["file_name"] == "'=HYPERLINK(1).jpg"
    assert abs(sum(float(rows[0][f"p_{c}"]) for c in CLASSES) - 1) < 1e-4


def test_gradcam_and_thumbnail_png(client, image_bytes):
    result = client.post("/api/v1/predict", files=files(("a.jpg", jpeg(image_bytes, size=96)))).json()["results"][0]
    overlay = client.get(result["links"]["gradcam"])
    assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(overlay.content)).size == (96, 96)
    assert client.get(result["links"]["gradcam"], params={"target": "Pro-B"}).status_code == 200
    assert client.get(result["links"]["gradcam"], params={"target": "Nope"}).status_code == 422
    thumb = client.get(result["links"]["thumbnail"])
    assert thumb.status_code == 200 and max(Image.open(io.BytesIO(thumb.content)).size) <= 160
    assert client.get("/api/v1/predictions/00000000-0000-4000-8000-000000000999/gradcam").status_code == 404
    assert client.get("/api/v1/predictions/00000000-0000-4000-8000-000000000999").status_code == 404


def test_saturated_server_answers_503_with_retry_after(make_client, image_bytes):
    hold = threading.Event()
    predictor = FakePredictor(hold=hold)
    client = make_client(predictor=predictor, workers=1, queue=0)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/api/v1/predict", files=files(("a.jpg", jpeg(image_bytes))))
        assert predictor.entered.acquire(timeout=60)
        busy = client.post("/api/v1/predict", files=files(("b.jpg", jpeg(image_bytes, 2))))
        hold.set()
        assert first.result(timeout=60).status_code == 200
    assert busy.status_code == 503 and busy.headers["retry-after"] == "2"
    assert "busy" in busy.json()["detail"]
    assert client.get("/api/v1/predictions").json()["total"] == 1
    assert client.get("/api/v1/health").json()["in_flight"] == 0


def test_concurrent_requests_store_every_row_once(make_client, image_bytes):
    client = make_client(workers=2, queue=32)
    uploads = [(f"{i}.jpg", jpeg(image_bytes, i)) for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda item: client.post("/api/v1/predict", files=files(item)), uploads))
    assert all(r.status_code == 200 for r in responses)
    ids = [r.json()["results"][0]["id"] for r in responses]
    history = client.get("/api/v1/predictions", params={"per_page": 100}).json()
    assert history["total"] == 16 and sorted(r["id"] for r in history["items"]) == sorted(ids)
    assert len(set(ids)) == 16


def test_unexpected_errors_are_500_json_without_details(make_client, image_bytes, caplog):
    client = make_client(predictor=FakePredictor(explode=True), raise_server_exceptions=False)
    response = client.post("/api/v1/predict", files=files(("a.jpg", jpeg(image_bytes))))
    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error (details are in the server log)"}
    assert "secret" not in response.text and "Traceback" not in response.text
    assert any("unexpected error" in r.message for r in caplog.records)


def test_pages_render_with_disclaimer_and_strict_headers(client, image_bytes):
    client.post("/api/v1/predict", files=files(("<img src=x onerror=alert(1)>.jpg", jpeg(image_bytes))))
    for path in ("/", "/history", "/history?review=yes&label=Benign", "/history?page=3"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert "Research use only" in response.text and "not a certified medical device" in response.text
        assert "<script>" not in response.text  # no inline script: only <script src=...>
        csp = response.headers["content-security-policy"]
        script_src = next(part for part in csp.split(";") if part.strip().startswith("script-src"))
        assert "'self'" in script_src and "unsafe-inline" not in script_src
        assert "frame-ancestors 'none'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "same-origin"  # forms' POSTs carry their real Origin
    history = client.get("/history").text
    assert "&lt;img src=x onerror=alert(1)&gt;.jpg" in history and "<img src=x" not in history
    assert client.get("/history?review=maybe").status_code == 422
    for query, expected in (("", 1), ("?review=yes&label=Benign", None), ("?review=no", None)):
        html = client.get("/history" + query).text
        link = re.search(r'id="history-csv"\s+href="([^"]+)"', html).group(1).replace("&amp;", "&")
        export = client.get(link)
        assert export.status_code == 200, (link, export.text)
        if expected is not None:
            assert len(export.text.strip().splitlines()) == 1 + expected
    assert client.get("/static/app.js").status_code == 200


def test_real_tiny_package_through_load_predictor(tiny_package: Path, settings, tmp_path):
    """The app loads a real package itself (predictor=None) and predicts a smear-like image."""
    from fastapi.testclient import TestClient

    from leukoscope.serve import create_app
    from tests.helpers.modelfixtures import smear_image

    buffer = io.BytesIO()
    Image.fromarray(smear_image(2, 99)).save(buffer, "PNG")
    with TestClient(create_app(settings.with_(model=str(tiny_package)))) as client:
        card = client.get("/api/v1/model").json()
        assert card["backend"] == "onnx" and len(card["classes"]) == 4
        assert card["model_file"] == client.get("/api/v1/health").json()["model_file"] == "model.onnx"  # what answers
        response = client.post("/api/v1/predict", files=files(("smear.png", buffer.getvalue()), ("x.txt", b"no")))
        assert response.status_code == 200, response.text
        good, bad = response.json()["results"]
        assert good["ok"] and good["label"] in card["classes"] and not bad["ok"]
        assert abs(sum(good["probabilities"].values()) - 1) < 1e-5
        assert client.get("/api/v1/predictions").json()["total"] == 1
        overlay = client.get(good["links"]["gradcam"])  # leukoscope.inference.explain on the package's model.pt
        assert overlay.status_code == 200, overlay.text
        assert Image.open(io.BytesIO(overlay.content)).size == (64, 64)


def test_history_page_paginates_newest_first(make_client, image_bytes):
    client = make_client(page_size=2)
    for i in range(3):
        client.post("/api/v1/predict", files=files((f"n{i}.jpg", jpeg(image_bytes, i))))
    first = client.get("/history").text
    assert "page 1 of 2" in first and first.index("n2.jpg") < first.index("n1.jpg") and "n0.jpg" not in first
    older = re.search(r'href="([^"]+)" rel="next"', first).group(1).replace("&amp;", "&")
    second = client.get(older).text
    assert "page 2 of 2" in second and "n0.jpg" in second and "n2.jpg" not in second


def test_images_past_the_retention_period_are_purged_and_their_predictions_kept(make_client, image_bytes,
                                                                                  monkeypatch):
    from leukoscope.serve import service as service_module

    client = make_client(keep_images_days=1)
    result = client.post("/api/v1/predict", files=files(("a.jpg", jpeg(image_bytes)))).json()["results"][0]
    assert client.get(result["links"]["thumbnail"]).status_code == 200
    ctx = client.app.state.ctx
    real_now = service_module.datetime
    monkeypatch.setattr(service_module, "datetime", type("Later", (), {
        "now": staticmethod(lambda tz=None: real_now.now(tz) + service_module.timedelta(days=2))}))
    assert ctx.service.purge_expired_images() == 0  # purged at most once an hour while serving
    assert ctx.service.purge_expired_images(force=True) == 1
    gone = client.get(result["links"]["thumbnail"])
    assert gone.status_code == 404 and "not kept" in gone.json()["detail"]
    kept = client.get(f"/api/v1/predictions/{result['id']}")
    assert kept.status_code == 200 and kept.json()["label"] == result["label"]


def test_without_a_retention_period_nothing_is_purged(client, image_bytes):
    client.post("/api/v1/predict", files=files(("a.jpg", jpeg(image_bytes))))
    assert client.app.state.ctx.service.purge_expired_images(force=True) == 0

"""The web app's per-image status and sample call (issue #11 items 5 and 6): an unusable upload gets no class
and does not count, the sample call leads with leukemia, reasons carry codes and numbers, old rows still show."""

from __future__ import annotations

import contextlib
import csv
import io
import json

from PIL import Image

from leukoscope.serve.store import Store
from tests.serve.fakes import files
from tests.serve.legacy_schema import legacy_database


def solid(colour: tuple[int, int, int], size: int = 64) -> bytes:
    """The fake predictor calls an image by its mean colour: red Benign, green Early Pre-B, blue Pre-B,
    dark Pro-B."""
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, "PNG")
    return buffer.getvalue()


RED, DARK = solid((250, 10, 10)), solid((20, 20, 20))


def test_an_unusable_upload_has_no_class_and_is_left_out_of_the_sample(client, settings):
    uploads = [("cell.png", RED), ("copy.png", RED), ("dot.png", solid((200, 90, 150), size=1))]
    response = client.post("/api/v1/predict", files=files(*uploads), data={"sample_id": "s-unusable"})
    assert response.status_code == 200, response.text
    body = response.json()
    cell, copy, dot = body["results"]
    assert cell["status"] == "ok" and cell["label"] == "Benign" and copy["sha256"] == cell["sha256"]
    assert dot["ok"] and dot["status"] == "unusable" and dot["label"] is None and dot["id"] is not None
    assert dot["review_codes"] == ["too_small"] and dot["review_details"]["too_small"]["width"] == 1
    assert dot["review_reasons"] and set(dot["probabilities"].values()) == {0.0}
    summary = body["summary"]
    assert (summary["images"], summary["usable"], summary["unusable"], summary["duplicates"]) == (3, 1, 1, 1)
    assert summary["counts"] == {"Benign": 1, "Early Pre-B": 0, "Pre-B": 0, "Pro-B": 0}
    assert summary["call"] == "benign" and "unusable_images" in summary["review_codes"]
    assert "1 duplicate image counted once" in summary["summary"]
    again = client.get("/api/v1/samples/s-unusable").json()
    assert {k: again[k] for k in ("call", "usable", "unusable", "duplicates", "counts")} == {
        k: summary[k] for k in ("call", "usable", "unusable", "duplicates", "counts")}
    stored = client.get(dot["links"]["self"]).json()
    assert stored["status"] == "unusable" and stored["label"] is None
    with Store(settings.db) as store:
        assert store.labels() == ["Benign"]  # no empty class in the history's filter menu
    assert "unusable: no class" in client.get("/history?sample_id=s-unusable").text
    rows = list(csv.DictReader(io.StringIO(client.get("/api/v1/predictions.csv?sample_id=s-unusable").text)))
    assert {r["status"] for r in rows} == {"ok", "unusable"}
    assert [r["review_codes"] for r in rows if r["status"] == "unusable"] == ["too_small"]


def test_three_benign_and_one_leukemic_image_is_leukemia_suspected(client):
    uploads = [(f"b{i}.png", solid((250, 10 + i, 10))) for i in range(3)] + [("p.png", DARK)]
    summary = client.post("/api/v1/predict", files=files(*uploads)).json()["summary"]
    assert summary["call"] == "leukemia" and summary["label"] == "Pro-B"
    assert summary["headline"].startswith("leukemia suspected: Pro-B")
    assert summary["summary"].startswith("leukemic-looking cells in 1 of 4 usable images")
    assert summary["leukemic_images"] == 1 and summary["counts"]["Benign"] == 3


def test_only_unusable_uploads_make_no_call(client):
    body = client.post("/api/v1/predict", files=files(("dot.png", solid((1, 2, 3), size=2)))).json()
    assert body["results"][0]["status"] == "unusable"
    assert body["summary"]["call"] is None and body["summary"]["label"] is None
    assert "no_usable_images" in body["summary"]["review_codes"]


def test_rows_stored_before_status_and_codes_still_show(settings, make_client):
    """A database from the release before (schema 3) keeps its reasons; its rows read as status ok."""
    with contextlib.closing(legacy_database(settings.db, 3)) as conn:
        conn.execute("INSERT INTO images (sha256, data, size, created_at) VALUES ('a', x'00', 1, '2026-01-01')")
        conn.execute(
            "INSERT INTO predictions (created_at, sample_id, file_name, sha256, model_version, label, confidence, "
            "probabilities, review, review_reasons, ood_score, width, height) VALUES ('2026-01-01T00:00:00.000Z', "
            "'old', 'old.jpg', 'a', 'm@1', 'Pre-B', 0.6, ?, 1, ?, NULL, 224, 224)",
            (json.dumps({"Benign": 0.4, "Pre-B": 0.6}), json.dumps(["low confidence (0.60 < 0.99)"])))
    client = make_client()
    (row,) = client.get("/api/v1/predictions").json()["items"]
    assert row["status"] == "ok" and row["review_codes"] == [] and row["review_details"] == {}
    assert row["review_reasons"] == ["low confidence (0.60 < 0.99)"]
    assert "low confidence (0.60 &lt; 0.99)" in client.get("/history").text
    summary = client.get("/api/v1/samples/old").json()
    assert summary["call"] == "leukemia" and summary["label"] == "Pre-B" and "leukemia_flagged" in summary["review_codes"]

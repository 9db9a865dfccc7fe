"""The cell gallery (#16): a sample's cells grouped by class with counts, computed lazily and once, each cell
linked to its field with the cell outlined, a field without cells reading "no cell found", and cells verified
like fields (without touching the field verifications). On the fake predictor and fake cells (fakes.py).
Isolation between clinics: tests/serve/test_clinics.py walks these routes too."""

from __future__ import annotations

import io
import re
import threading
import uuid

import pytest
from PIL import Image

from leukoscope.serve.store import Store
from tests.serve.fakes import FakeCells, files

TOKEN = "cells-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def png(left: tuple[int, int, int], right: tuple[int, int, int] | None = None, size: int = 64) -> bytes:
    """A field whose left half is `left` and right half `right` (fake cells: top-left and bottom-right quarters)."""
    image = Image.new("RGB", (size, size), left)
    if right is not None:
        image.paste(Image.new("RGB", (size // 2, size), right), (size // 2, 0))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


RED, BLUE, WHITE = (250, 10, 10), (10, 10, 250), (255, 255, 255)


@pytest.fixture
def fake_cells() -> FakeCells:
    return FakeCells()


@pytest.fixture
def api(make_client, fake_cells):
    """A server with a token and one sample "s1": a red|blue field (a Benign and a Pre-B cell), a blue one (two
    Pre-B cells) and a white one (no cell found)."""
    client = make_client(cells=fake_cells, token=TOKEN)
    made = client.post("/api/v1/predict", files=files(("mixed.png", png(RED, BLUE)), ("blue.png", png(BLUE)),
                                                      ("empty.png", png(WHITE))), data={"sample_id": "s1"},
                       headers=AUTH)
    assert made.status_code == 200, made.text
    assert fake_cells.calls == []  # nothing is segmented at upload
    return client


def test_the_gallery_counts_and_groups_cells_by_class_and_computes_them_once(api, fake_cells, settings):
    first = api.get("/api/v1/samples/s1/cells", headers=AUTH)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["counts"] == {"Benign": 1, "Early Pre-B": 0, "Pre-B": 3, "Pro-B": 0} and body["n_cells"] == 4
    assert [(f["file_name"], f["status"], f["n_cells"]) for f in body["fields"]] == [
        ("mixed.png", "ok", 2), ("blue.png", "ok", 2), ("empty.png", "no cell found", 0)]
    mixed = body["fields"][0]
    assert [(c["label"], c["bbox"], c["prediction_id"]) for c in body["cells"][:2]] == [
        ("Benign", [0, 0, 32, 32], mixed["prediction_id"]), ("Pre-B", [32, 32, 64, 64], mixed["prediction_id"])]
    assert all(len(c["id"]) == 36 and set(c["probabilities"]) == {"Benign", "Early Pre-B", "Pre-B", "Pro-B"}
               for c in body["cells"])
    assert fake_cells.calls == [["mixed.png", "blue.png", "empty.png"]]
    again = api.get("/api/v1/samples/s1/cells", headers=AUTH)
    page = api.get("/cells", params={"sample_id": "s1"}, headers=AUTH)
    assert again.json() == body and page.status_code == 200
    assert fake_cells.calls == [["mixed.png", "blue.png", "empty.png"]]  # read, not computed again
    with Store(settings.db) as store:
        assert store.scalar("SELECT COUNT(*) FROM cells") == 4 and store.scalar("SELECT COUNT(*) FROM cell_fields") == 3
    html = page.text
    groups = re.findall(r'<section class="cell-group" data-class="([^"]*)"', html)
    assert groups == ["Benign", "Pre-B"]  # classes with a cell, in the model's order
    assert re.search(r'data-class="Pre-B"><th scope="row">Pre-B</th><td class="num">3</td>', html)
    assert html.count("data-cell-id=") == 4 and "no cell found" in html


def test_each_cell_links_to_its_field_with_the_cell_outlined(api):
    cells = api.get("/api/v1/samples/s1/cells", headers=AUTH).json()["cells"]
    cell = cells[1]
    crop = api.get(f"/api/v1/cells/{cell['id']}/crop", headers=AUTH)
    assert crop.status_code == 200 and crop.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(crop.content))
    assert max(image.size) <= 128 and image.getpixel((image.size[0] // 2, image.size[1] // 2))[2] > 200  # blue
    page = api.get("/cells", params={"sample_id": "s1", "cell": cell["id"]}, headers=AUTH).text
    assert f'href="/api/v1/predictions/{cell["prediction_id"]}/image"' in page
    assert re.search(r'<rect class="cell-outline" data-cell-outline x="32" y="32" width="32"\s+height="32"', page)
    assert f'cell={cell["id"]}#cell-field' in page  # the thumbnails link here
    assert 'aria-label="field mixed.png with cell 2 outlined"' in page


def test_a_cell_is_verified_like_a_field_and_field_verifications_are_untouched(api, settings):
    cell = api.get("/api/v1/samples/s1/cells", headers=AUTH).json()["cells"][0]
    assert api.get("/api/v1/worklist/cells", headers=AUTH).json()["total"] == 4
    made = api.post(f"/api/v1/cells/{cell['id']}/verifications", json={"label": "Pro-B", "comment": "a blast"},
                    headers=AUTH)
    assert made.status_code == 201, made.text
    assert made.json()["cell_id"] == cell["id"] and made.json()["label"] == "Pro-B"
    assert api.post(f"/api/v1/cells/{cell['id']}/verifications", json={"label": "Monocyte"},
                    headers=AUTH).status_code == 422
    assert api.post(f"/api/v1/cells/{uuid.uuid4()}/verifications", json={"unusable": True},
                    headers=AUTH).status_code == 404
    assert api.post(f"/api/v1/cells/{cell['id']}/verifications", json={"unusable": True}).status_code == 401
    shown = api.get(f"/api/v1/cells/{cell['id']}", headers=AUTH).json()
    assert shown["verification"]["label"] == "Pro-B" and shown["verification"]["user"] == "api-token"
    trail = api.get(f"/api/v1/cells/{cell['id']}/verifications", headers=AUTH).json()["items"]
    assert [v["label"] for v in trail] == ["Pro-B"]
    worklist = api.get("/api/v1/worklist/cells", headers=AUTH).json()
    assert worklist["total"] == 3 and cell["id"] not in {c["id"] for c in worklist["items"]}
    page = api.get("/cells", params={"sample_id": "s1"}, headers=AUTH).text
    assert "✓ Pro-B" in page
    field = api.get(f"/api/v1/predictions/{cell['prediction_id']}", headers=AUTH).json()
    assert field["verification"] is None  # a cell's verification is not its field's
    with Store(settings.db) as store:
        assert store.scalar("SELECT COUNT(*) FROM verifications") == 0
        assert store.scalar("SELECT COUNT(*) FROM cell_verifications") == 1


def test_an_unknown_sample_or_cell_is_404_and_the_page_says_so(api):
    assert api.get("/api/v1/samples/nope/cells", headers=AUTH).status_code == 404
    assert api.get("/api/v1/samples/bad%20id/cells", headers=AUTH).status_code == 422
    for path in ("", "/crop", "/verifications"):
        response = api.get(f"/api/v1/cells/{uuid.uuid4()}{path}", headers=AUTH)
        assert response.status_code == 404 and "detail" in response.json()
    assert api.get("/api/v1/worklist/cells", params={"after_id": str(uuid.uuid4())}, headers=AUTH).status_code == 404
    page = api.get("/cells", params={"sample_id": "nope"}, headers=AUTH)
    assert page.status_code == 200 and "No predictions stored for sample nope" in page.text


def test_a_busy_server_answers_503_and_computes_later(make_client):
    release = threading.Event()

    class Held(FakeCells):
        def __call__(self, predictor, items):
            release.wait(timeout=30)
            return super().__call__(predictor, items)

    held = Held()
    client = make_client(cells=held, token=TOKEN, workers=1, queue=0)
    assert client.post("/api/v1/predict", files=files(("a.png", png(BLUE))), data={"sample_id": "s2"},
                       headers=AUTH).status_code == 200
    results: list[int] = []
    worker = threading.Thread(target=lambda: results.append(
        client.get("/api/v1/samples/s2/cells", headers=AUTH).status_code))
    worker.start()
    try:
        for _ in range(200):  # wait until the first request holds the only slot
            if client.app.state.ctx.gate.in_flight:
                break
            threading.Event().wait(0.01)
        busy = client.get("/api/v1/samples/s2/cells", headers=AUTH)
        assert busy.status_code == 503 and busy.headers["Retry-After"] and "detail" in busy.json()
    finally:
        release.set()
        worker.join(timeout=30)
    assert results == [200] and len(held.calls) == 1


def test_the_verify_page_switches_between_fields_and_cells(api):
    fields = api.get("/verify", headers=AUTH).text
    cells = api.get("/verify", params={"unit": "cells"}, headers=AUTH).text
    assert 'data-unit="fields"' in fields and "gradcam-panel" in fields and 'id="cell-view"' not in fields
    assert 'data-unit="cells"' in cells and 'id="cell-field-outline"' in cells and "/static/gradcam.js" not in cells
    assert re.search(r'<a href="/verify\?unit=cells" aria-current="page">Cells</a>', cells)
    assert api.get("/verify", params={"unit": "pixels"}, headers=AUTH).status_code == 422


def test_a_tiny_field_reads_unusable_with_its_reason(make_client):
    client = make_client(token=TOKEN)
    assert client.post("/api/v1/predict", files=files(("tiny.png", png(BLUE, size=4))), data={"sample_id": "s3"},
                       headers=AUTH).status_code == 200
    body = client.get("/api/v1/samples/s3/cells", headers=AUTH).json()
    assert body["n_cells"] == 0 and body["fields"][0]["status"] == "unusable" and "4x4 pixels" in body["fields"][0]["reason"]

"""A real browser on a real server: Debian's Chromium driven by Playwright (Python).

Uploads images through the file picker and by drag and drop, checks the result rows and the sample
summary, opens a Grad-CAM overlay, visits the history, and saves screenshots in the test's tmp_path.
Skips (saying how to enable it) where /usr/bin/chromium or the playwright package is missing.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.serve.servers import ServerProcess

CHROMIUM = os.environ.get("LEUKOSCOPE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--disable-quic"]
WAIT_MS = 60_000  # bounds on waiting for the page, not timing assertions


@contextlib.contextmanager
def chromium_page(playwright: Any, width: int) -> Iterator[tuple[Any, list[str]]]:
    """A headless Chromium page and the list its console errors and page errors (CSP violations too) go to."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                                         headless=True, args=CHROMIUM_ARGS)
    try:
        page = browser.new_page(viewport={"width": width, "height": 900})
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        yield page, problems
    finally:
        browser.close()

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() or shutil.which("chromium")),
    reason="Chromium not installed: `apt-get install chromium` (Debian) to run the browser tests "
           "(make test does it when run as root via scripts/ensure_browser.sh)",
)


def smear_png(cls: int, seed: int) -> bytes:
    try:
        from tests.helpers.modelfixtures import smear_image

        pixels = smear_image(cls, seed)
    except ImportError:  # the fake-model fallback only needs some image
        pixels = np.random.default_rng(seed).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model_for_browser(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """A real tiny package when tests/helpers/modelfixtures.py can build one; else None (the fake predictor)."""
    try:
        from tests.helpers.modelfixtures import shared_tiny_package

        return shared_tiny_package(tmp_path_factory)
    except Exception:  # pragma: no cover - depends on the inference modules being present
        return None


@pytest.mark.slow
def test_upload_results_gradcam_and_history_in_chromium(tmp_path: Path, model_for_browser: Path | None):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    images = []
    for cls in (0, 3):
        path = tmp_path / f"smear-{cls}.png"
        path.write_bytes(smear_png(cls, 50 + cls))
        images.append(path)
    with ServerProcess(tmp_path / "data" / "leukoscope.db", tmp_path / "server.log", model=model_for_browser) as server, \
            sync_api.sync_playwright() as p, chromium_page(p, width=1280) as (page, problems):
        elsewhere: list[str] = []  # a lab network may have no internet: nothing may load from another origin
        page.on("request", lambda r: elsewhere.append(r.url) if not r.url.startswith((server.url, "data:", "blob:"))
                else None)
        page.goto(server.url + "/", wait_until="networkidle", timeout=WAIT_MS)
        assert "Research use only" in page.inner_text(".disclaimer")

        # pick two files: two result rows and a sample summary
        page.set_input_files("#file-input", [str(path) for path in images])
        rows = page.locator("#results tbody tr.predicted")
        rows.nth(1).wait_for(timeout=WAIT_MS)
        assert rows.count() == 2
        first = rows.nth(0)
        assert first.locator(".label").inner_text().strip() != ""
        assert first.locator("td.file").inner_text() == "smear-0.png"
        assert first.locator("table.probs tr").count() == 4
        page.locator("#summary").wait_for(state="visible", timeout=WAIT_MS)
        assert "2 images predicted" in page.inner_text("#summary-text")
        page.wait_for_function("() => [...document.querySelectorAll('img.thumb')].every(i => i.naturalWidth > 0)",
                               timeout=WAIT_MS)
        assert page.get_attribute("#csv-link", "href").startswith("/api/v1/predictions.csv?sample_id=")
        page.screenshot(path=str(tmp_path / "results.png"), full_page=True)

        # open the first image's Grad-CAM: original and overlay side by side, in the page, with a colour scale
        first.locator(".gradcam-button").click()
        page.wait_for_function(
            "() => ['gradcam-image', 'gradcam-original'].every(id => { const i = document.getElementById(id);"
            " return !i.hidden && i.naturalWidth > 0; })", timeout=WAIT_MS)
        assert page.locator("#gradcam-panel").is_visible() and page.locator("dialog[open]").count() == 0
        assert "smear-0.png" in page.inner_text("#gradcam-caption")
        assert "low attention" in page.inner_text(".gradcam-legend")
        assert "high attention" in page.inner_text(".gradcam-legend")
        sizes = page.evaluate("() => ['gradcam-original', 'gradcam-image'].map(id => {"
                              " const i = document.getElementById(id); return [i.naturalWidth, i.naturalHeight,"
                              " i.getBoundingClientRect().top, i.getBoundingClientRect().width]; })")
        assert sizes[0][:2] == sizes[1][:2]  # same pixels: the overlay lies over exactly this image
        assert sizes[0][2] == sizes[1][2] and sizes[0][3] == sizes[1][3] > 0  # side by side, same scale
        page.screenshot(path=str(tmp_path / "gradcam.png"))
        page.click("#gradcam-close")
        assert not page.locator("#gradcam-panel").is_visible()

        # drag and drop one more image: a new sample, a single row
        encoded = base64.b64encode(smear_png(2, 7)).decode()
        transfer = page.evaluate_handle(
            """(b64) => { const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                   const dt = new DataTransfer();
                   dt.items.add(new File([bytes], 'dropped.png', {type: 'image/png'})); return dt; }""", encoded)
        page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
        page.wait_for_function(
            "() => [...document.querySelectorAll('#results td.file')].map(t => t.textContent).join() === 'dropped.png'",
            timeout=WAIT_MS)

        page.goto(server.url + "/history", wait_until="networkidle", timeout=WAIT_MS)
        assert page.locator("table.history > tbody > tr").count() == 3
        assert "3 predictions" in page.inner_text("main")
        page.locator("table.history .gradcam-button").first.click()  # the same viewer, in the history page
        page.wait_for_function(
            "() => { const i = document.getElementById('gradcam-image'); return !i.hidden && i.naturalWidth > 0; }",
            timeout=WAIT_MS)
        assert page.locator("#gradcam-panel").is_visible() and "dropped.png" in page.inner_text("#gradcam-caption")
        page.screenshot(path=str(tmp_path / "history.png"), full_page=True)

        # the API docs (Swagger UI) render from the app's own files
        page.goto(server.url + "/docs", wait_until="networkidle", timeout=WAIT_MS)
        page.locator(".swagger-ui .info .title").wait_for(timeout=WAIT_MS)
        assert "leukoscope" in page.inner_text(".swagger-ui .info .title")
        assert page.locator(".opblock-summary-path[data-path='/api/v1/predict']").count() == 1
        assert problems == [], problems  # CSP violations and script errors show up here
        assert elsewhere == [], elsewhere
    assert (tmp_path / "results.png").stat().st_size > 0 and (tmp_path / "gradcam.png").stat().st_size > 0


def seed_worklist(db: Path, tmp_path: Path) -> dict[str, dict]:
    """A technologist (alice) and five stored predictions with their images, as uploads would leave them."""
    from leukoscope.data.fileio import sha256_bytes
    from leukoscope.serve.store import NewPrediction, Store
    from leukoscope.serve.users import Users
    from tests.serve.fakes import CLASSES

    seeded = {}
    with Store(db) as store:
        Users(store).add("alice", "technologist", "correct horse battery")
        for i in range(5):
            data = smear_png(i % 4, 100 + i)
            sha = sha256_bytes(data)
            label, flagged = CLASSES[i % 4], i in (1, 3)
            row = NewPrediction(sample_id="s1", file_name=f"cell-{i}.png", sha256=sha, model_version="fake@1",
                                label=label, confidence=0.8, probabilities={c: 0.8 if c == label else 0.2 / 3
                                                                            for c in CLASSES},
                                review=flagged, review_reasons=["low confidence (0.80 < 0.90)"] if flagged else [],
                                ood_score=1.0, width=64, height=64)
            seeded[row.file_name] = store.add([row], {sha: data})[0].to_json()
    return seeded


@pytest.mark.slow
def test_a_technologist_verifies_four_items_with_the_keyboard_in_chromium(tmp_path: Path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    db = tmp_path / "data" / "leukoscope.db"
    seeded = seed_worklist(db, tmp_path)
    with ServerProcess(db, tmp_path / "server.log") as server, sync_api.sync_playwright() as p, \
            chromium_page(p, width=1400) as (page, problems):

        page.goto(server.url + "/verify", wait_until="networkidle", timeout=WAIT_MS)  # users exist: log in first
        assert "/login" in page.url
        page.fill("input[name=name]", "alice")
        page.fill("input[name=password]", "correct horse battery")
        page.click("#password-login button[type=submit]")
        page.wait_for_url(server.url + "/verify", timeout=WAIT_MS)
        assert page.inner_text(".who") == "alice"

        def shown() -> str:
            page.wait_for_function("() => !document.getElementById('verify-item').hidden", timeout=WAIT_MS)
            return page.inner_text("#verify-file")

        # flagged first (cell-3, cell-1), then the rest, newest first
        assert shown() == "cell-3.png"
        page.wait_for_function(  # the image large and its Grad-CAM beside it
            "() => ['gradcam-image', 'gradcam-original'].every(id => { const i = document.getElementById(id);"
            " return !i.hidden && i.naturalWidth > 0; })", timeout=WAIT_MS)
        assert "low confidence" in page.inner_text("#verify-reasons")
        assert page.locator("#verify-probs tr").count() == 4
        page.screenshot(path=str(tmp_path / "verify.png"), full_page=True)
        expected = {}
        for key, then in (("2", "cell-1.png"), ("Enter", "cell-4.png"), ("u", "cell-2.png"), ("4", "cell-0.png")):
            current = shown()
            if key == "4":  # a comment: typing in it triggers no key, Esc leaves it
                page.click("#verify-comment")
                page.keyboard.type("u2 check smear")
                page.keyboard.press("Escape")
                assert shown() == current
            page.keyboard.press(key)
            calls = {"2": "Early Pre-B", "Enter": seeded[current]["label"], "u": None, "4": "Pro-B"}
            expected[current] = calls[key]
            page.wait_for_function(f"() => document.getElementById('verify-file').textContent === {then!r}",
                                   timeout=WAIT_MS)  # the next item at once
        page.wait_for_function("() => document.getElementById('verify-status').textContent"
                               ".startsWith('4 verified on this page')", timeout=WAIT_MS)
        page.keyboard.press("ArrowLeft")  # back to the last one: its verification shows
        page.wait_for_function("() => !document.getElementById('verify-done').hidden", timeout=WAIT_MS)
        assert page.inner_text("#verify-done").startswith("Verified as Pro-B by alice")

        page.goto(server.url + "/history?verified=verified", wait_until="networkidle", timeout=WAIT_MS)
        rows = page.locator("table.history > tbody > tr")
        assert rows.count() == 4
        for i in range(4):
            row = rows.nth(i)
            name = row.locator("td.file").inner_text()
            verified = row.locator("td.verified-cell .verified").inner_text()
            assert verified == (expected[name] or "unusable"), name
            assert "by alice" in row.locator("td.verified-cell").inner_text()
        assert "u2 check smear" in page.inner_text("table.history")
        page.screenshot(path=str(tmp_path / "history-verified.png"), full_page=True)
        page.goto(server.url + "/agreement", wait_until="networkidle", timeout=WAIT_MS)
        assert "4 verified" in page.inner_text("main") and page.locator("svg.chart").count() == 1
        assert problems == [], problems  # CSP violations and script errors show up here


@pytest.mark.slow
def test_the_cell_gallery_and_a_cell_verified_with_the_keyboard_in_chromium(tmp_path: Path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    db = tmp_path / "data" / "leukoscope.db"
    seed_worklist(db, tmp_path)  # five fields of sample s1; the fake cells function finds two cells in each
    with ServerProcess(db, tmp_path / "server.log") as server, sync_api.sync_playwright() as p, \
            chromium_page(p, width=1400) as (page, problems):
        page.goto(server.url + "/cells?sample_id=s1", wait_until="networkidle", timeout=WAIT_MS)
        page.fill("input[name=name]", "alice")
        page.fill("input[name=password]", "correct horse battery")
        page.click("#password-login button[type=submit]")
        page.wait_for_url("**/cells?sample_id=s1", timeout=WAIT_MS)
        counts = {row.get_attribute("data-class"): int(row.locator("td").inner_text())
                  for row in page.locator("#cell-counts tr[data-class]").all()}
        assert sum(counts.values()) == 10 and page.locator("a[data-cell-id]").count() == 10, counts
        page.locator("a[data-cell-id]").first.click()  # its field, with the cell outlined
        page.wait_for_selector("#cell-field rect[data-cell-outline]", timeout=WAIT_MS)

        page.goto(server.url + "/verify?unit=cells", wait_until="networkidle", timeout=WAIT_MS)
        page.wait_for_function("() => !document.getElementById('verify-item').hidden", timeout=WAIT_MS)
        first = page.inner_text("#verify-file")
        assert "cell" in first
        page.keyboard.press("1")
        page.wait_for_function(f"() => document.getElementById('verify-file').textContent !== {first!r}",
                               timeout=WAIT_MS)
        page.wait_for_function("() => document.getElementById('verify-status').textContent"
                               ".startsWith('1 verified on this page')", timeout=WAIT_MS)
        page.goto(server.url + "/cells?sample_id=s1", wait_until="networkidle", timeout=WAIT_MS)
        assert page.locator(".cell-grid .verified").count() == 1  # the verification shows in the gallery
        assert problems == [], problems

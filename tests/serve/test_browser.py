"""A real browser on a real server: Debian's Chromium driven by Playwright (Python).

Uploads images through the file picker and by drag and drop, checks the result rows and the sample
summary, opens a Grad-CAM overlay, visits the history, and saves screenshots in the test's tmp_path.
Skips (saying how to enable it) where /usr/bin/chromium or the playwright package is missing.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.serve.servers import ServerProcess

CHROMIUM = os.environ.get("LEUKOSCOPE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--disable-quic"]
WAIT_MS = 60_000  # bounds on waiting for the page, not timing assertions

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
            sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                                    headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
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
        finally:
            browser.close()
    assert (tmp_path / "results.png").stat().st_size > 0 and (tmp_path / "gradcam.png").stat().st_size > 0

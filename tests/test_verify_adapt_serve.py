"""The second lab's loop end to end, as a lab would run it: a technologist verifies the parent package's
calls in the web app, `leukoscope data export-verified` turns the verified images into a dataset,
`leukoscope adapt` fine-tunes the parent on it, and the server runs the new package, whose predictions
carry its version beside the parent's on the agreement page. Only public surfaces are used (CLI, HTTP), so
the test holds whatever the store or the training loop look like inside."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from leukoscope.data.discover import discover
from leukoscope.serve import Settings, create_app
from tests.adaptation.fixtures import make_lab, shared_parent
from tests.helpers.cli import run

PASSWORD = "correct horse battery staple"


def _client(db: Path, model: Path) -> TestClient:
    return TestClient(create_app(Settings(db=db, model=model, warmup=False, allowed_hosts=("testserver",))))


def _login(client: TestClient) -> None:
    response = client.post("/login", data={"name": "tech", "password": PASSWORD, "next": "/verify"},
                           follow_redirects=False)
    assert response.status_code == 303, response.text


def _predict_all(client: TestClient, paths: list[Path]) -> list[dict]:
    results = []
    for start in range(0, len(paths), 16):
        files = [("files", (p.name, p.read_bytes(), "image/png")) for p in paths[start:start + 16]]
        response = client.post("/api/v1/predict", files=files)
        assert response.status_code == 200, response.text
        results += response.json()["results"]
    return results


@pytest.mark.slow
def test_verify_then_export_then_adapt_then_serve_the_new_package(tmp_path_factory: pytest.TempPathFactory,
                                                                   tmp_path: Path, capsys) -> None:
    parent = shared_parent(tmp_path_factory)
    lab = make_lab(tmp_path / "lab", hue=15)
    manifest = discover(lab)
    truth = {path.name: manifest.classes[record.label] if isinstance(record.label, int) else record.label
             for record, path in zip(manifest.records, manifest.paths(), strict=True)}
    db = tmp_path / "web" / "leukoscope.db"
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    code, _, err = run(capsys, "users", "add", "tech", "--role", "technologist", "--password-file",
                       tmp_path / "pw", "--db", db)
    assert code == 0, err

    with _client(db, parent) as client:
        _login(client)
        rows = _predict_all(client, list(manifest.paths()))
        assert len(rows) == len(truth) == 80
        parent_version = client.get("/api/v1/predictions", params={"per_page": 1}).json()["items"][0]["model_version"]
        for row in rows:
            response = client.post(f"/api/v1/predictions/{row['id']}/verifications",
                                   json={"label": truth[row["file_name"]]})
            assert response.status_code == 201, response.text

    code, _, err = run(capsys, "data", "export-verified", "--db", db, "--out", tmp_path / "verified")
    assert code == 0, err
    exported = discover(tmp_path / "verified")
    assert len(exported.records) == 80 and exported.classes == manifest.classes

    code, out, err = run(capsys, "adapt", parent, tmp_path / "verified", "--out", tmp_path / "adapted",
                         "--replay", parent.parent / "data", "--split", parent.parent / "run" / "split.csv",
                         "--epochs", "16", "--lr", "5e-4", "--replay-ratio", "2", "--augment", "paper",
                         "--device", "cpu", "--no-shift-rules")
    assert code == 0, out + err
    adapted = json.loads((tmp_path / "adapted" / "model.json").read_text())
    assert adapted["parent"]["model_version"] == parent_version  # the card names the parent the web app saw

    with _client(db, tmp_path / "adapted") as client:
        _login(client)
        (row,) = _predict_all(client, [next(iter(manifest.paths()))])
        stored = client.get(f"/api/v1/predictions/{row['id']}").json()
        assert stored["model_version"] != parent_version
        agreement = client.get("/agreement")
        assert agreement.status_code == 200
        assert parent_version in agreement.text and stored["model_version"] in agreement.text

"""A clinic's admin picks the clinic's model in the web app, among what the operator offers (--models-dir):
the choice reaches predictions at once, other clinics keep theirs, technologists and unknown names are refused,
and no file path ever comes from a request."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from leukoscope.serve import Settings, create_app
from leukoscope.serve.clinics import Clinics
from leukoscope.serve.store import Store
from leukoscope.serve.tokens import ApiTokens
from tests.serve.fakes import FakePredictor, fake_gradcam, files
from tests.serve.test_clinics import ClinicModel, bearer, png


def _package(folder: Path, **info: Any) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps({"name": folder.name, **info}))
    return folder


@pytest.fixture
def offered(tmp_path: Path) -> dict[str, Any]:
    models = tmp_path / "models"
    _package(models / "lab-b-adapted", parent={"model_version": "leukoscope-mbv2-all4@a3943917cb3a"})
    _package(models / "cells-only", unit="cells")  # a cell model is never offered: the app reads fields
    (models / "not-a-package").mkdir()
    db = tmp_path / "web.db"
    with Store(db) as store:
        clinics, tokens = Clinics(store), ApiTokens(store)
        north, south = clinics.add("north"), clinics.add("south")
        _, north_admin = tokens.create(north, "north-admin")
        _, north_tech = tokens.create(north, "north-tech", role="technologist")
        _, south_admin = tokens.create(south, "south-admin")
    settings = Settings(db=db, warmup=False, allowed_hosts=("testserver",), token="shared-token-for-models-tests",
                        models_dir=str(models))
    with TestClient(create_app(settings, FakePredictor(), gradcam=fake_gradcam, loader=ClinicModel)) as client:
        yield {"client": client, "north": north_admin, "tech": north_tech, "south": south_admin,
               "folder": str((models / "lab-b-adapted").resolve())}


def test_an_admin_sees_the_offered_models_and_chooses_one(offered: dict[str, Any]) -> None:
    client = offered["client"]
    listed = client.get("/api/v1/clinic/models", headers=bearer(offered["north"]))
    assert listed.status_code == 200, listed.text
    items = {item["id"]: item for item in listed.json()["items"]}
    assert set(items) == {"default", "lab-b-adapted"} and items["default"]["current"]
    assert items["lab-b-adapted"]["parent"] == "leukoscope-mbv2-all4@a3943917cb3a"
    assert offered["folder"] not in listed.text  # folder names only, never server paths

    chosen = client.put("/api/v1/clinic/model", json={"id": "lab-b-adapted"}, headers=bearer(offered["north"]))
    assert chosen.status_code == 200 and chosen.json()["id"] == "lab-b-adapted", chosen.text
    made = client.post("/api/v1/predict", files=files(("a.png", png((200, 20, 20)))), headers=bearer(offered["north"]))
    # the fake loader names what it loads "model-of-<folder>": the chosen package answers, at once
    assert made.status_code == 200 and made.json()["results"][0]["model_version"].startswith("model-of-lab-b-adapted@")
    south = client.post("/api/v1/predict", files=files(("b.png", png((20, 20, 200)))), headers=bearer(offered["south"]))
    assert "lab-b-adapted" not in south.json()["results"][0]["model_version"]  # the other clinic keeps its own
    back = client.put("/api/v1/clinic/model", json={"id": "default"}, headers=bearer(offered["north"]))
    assert back.status_code == 200 and back.json()["id"] == "default"


@pytest.mark.parametrize(("body", "status"), [({"id": "cells-only"}, 404), ({"id": "not-a-package"}, 404),
                                              ({"id": "../models/lab-b-adapted"}, 422), ({"id": "/etc"}, 422),
                                              ({"package": "default"}, 422), ({}, 422)])
def test_what_is_not_offered_is_refused(offered: dict[str, Any], body: dict[str, str], status: int) -> None:
    answer = offered["client"].put("/api/v1/clinic/model", json=body, headers=bearer(offered["north"]))
    assert answer.status_code == status and "detail" in answer.json()


def test_a_technologist_may_not_choose(offered: dict[str, Any]) -> None:
    client = offered["client"]
    assert client.get("/api/v1/clinic/models", headers=bearer(offered["tech"])).status_code == 403
    answer = client.put("/api/v1/clinic/model", json={"id": "lab-b-adapted"}, headers=bearer(offered["tech"]))
    assert answer.status_code == 403

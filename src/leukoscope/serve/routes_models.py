"""A clinic's admin picks the clinic's model in the web app (/api/v1/clinic/models, /api/v1/clinic/model).

The choices are what the server's operator put on offer: the server's own package (`serve --model`, the
bundled one by default) and every field-model package folder under `serve --models-dir` (for instance the
output folders of `leukoscope adapt`). An admin names a choice by its folder name; file paths never come from
a request, so a clinic can neither read nor load anything the operator did not offer. The choice is the same
database value `leukoscope clinics set-model` writes: every server process uses it within seconds.
Technologists get 403; a network admin chooses for their home clinic (other clinics: the CLI).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from leukoscope.inference.package import UNIT_FIELDS, unit_of
from leukoscope.serve.api_errors import error_responses
from leukoscope.serve.clinics import Clinics
from leukoscope.serve.context import ServerContext, get_ctx
from leukoscope.serve.limits import RequestRejected
from leukoscope.serve.models import model_version
from leukoscope.serve.security import home_clinic, require_admin

router = APIRouter(tags=["clinic model"], responses=error_responses(400, 401, 403, 429, 500))
Ctx = Annotated[ServerContext, Depends(get_ctx)]
DEFAULT_CHOICE = "default"
CHOICE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class ModelChoice(BaseModel):
    """One package a clinic may predict with."""

    id: str = Field(description="what to send to choose it: 'default' (the server's own) or a folder name")
    name: str
    version: str = Field(description="the model version every prediction made with it records")
    created: str | None = None
    parent: str | None = Field(None, description="the package it was adapted from, when made by `leukoscope adapt`")
    current: bool = Field(description="whether the caller's clinic predicts with it now")


class ModelChoices(BaseModel):
    items: list[ModelChoice]


class ChooseModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=CHOICE_PATTERN, description="'default' or a folder name from GET /api/v1/clinic/models")


def offered(models_dir: str | None) -> dict[str, Path]:
    """Folder name -> package folder, for every field-model package directly under `models_dir`."""
    if not models_dir:
        return {}
    root = Path(models_dir)
    found = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        info = _info(folder)
        if info is not None and unit_of(info) == UNIT_FIELDS:
            found[folder.name] = folder.resolve()
    return found


def _info(folder: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _choices(ctx: ServerContext, clinic_id: int) -> list[dict[str, Any]]:
    current = ctx.service.models.package_of(clinic_id)
    default = ctx.service.models.default
    items = [{"id": DEFAULT_CHOICE, "name": str(default.predictor.info.get("name", "default")),
              "version": default.version, "created": default.predictor.info.get("created"),
              "parent": None, "current": current is None}]
    for name, folder in offered(ctx.settings.models_dir).items():
        info = _info(folder) or {}
        parent = info.get("parent")
        items.append({"id": name, "name": str(info.get("name", name)), "version": model_version(info),
                      "created": info.get("created"),
                      "parent": str(parent.get("model_version")) if isinstance(parent, dict) else None,
                      "current": current == str(folder)})
    return items


@router.get("/clinic/models", response_model=ModelChoices)
async def clinic_models(request: Request, ctx: Ctx) -> dict[str, Any]:
    """The packages the caller's clinic may predict with, and which one it uses now (admins only)."""
    require_admin(request)
    return {"items": await ctx.run_io(_choices, ctx, home_clinic(request))}


@router.put("/clinic/model", response_model=ModelChoice, responses=error_responses(404, 413, 422))
async def choose_model(request: Request, ctx: Ctx, choice: Annotated[ChooseModel, Body()]) -> dict[str, Any]:
    """Make the caller's clinic predict with one of the offered packages (admins only)."""
    require_admin(request)
    clinic_id = home_clinic(request)
    if choice.id != DEFAULT_CHOICE and choice.id not in offered(ctx.settings.models_dir):
        raise RequestRejected(f"no model {choice.id!r} is offered by this server (GET /api/v1/clinic/models)", 404)

    def choose() -> list[dict[str, Any]]:
        clinics = Clinics(ctx.store)
        clinic = clinics.by_id(clinic_id)
        assert clinic is not None  # the principal's clinic is live (a removed clinic's credentials are refused)
        target = DEFAULT_CHOICE if choice.id == DEFAULT_CHOICE else str(offered(ctx.settings.models_dir)[choice.id])
        clinics.set_model(clinic.name, target)
        ctx.service.models.forget_choice(clinic_id)
        return _choices(ctx, clinic_id)

    items = await ctx.run_io(choose)
    return next(item for item in items if item["current"])

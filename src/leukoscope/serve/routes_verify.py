"""JSON API for verifying the model's calls (/api/v1/.../verifications, /api/v1/worklist) and, for admins,
the users (/api/v1/users). Handlers only translate HTTP to `VerificationService` calls and back.

Who verifies is who sent the request: the logged-in user, or the token's holder ("api-token", an admin).
Without either the answer is 401 (also on an open server: a verification always names someone); a
technologist on the user routes gets 403. Everything is the caller's clinic's: another clinic's
predictions and users answer 404.
"""

from __future__ import annotations

import calendar
import re
import uuid
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from leukoscope.serve.api_errors import error_responses
from leukoscope.serve.context import ServerContext, get_ctx
from leukoscope.serve.routes_api import PredictionId
from leukoscope.serve.security import clinic_scope, require_admin, require_user
from leukoscope.serve.store import MAX_PAGE, MAX_PER_PAGE, utc_text
from leukoscope.serve.users import NAME_PATTERN
from leukoscope.serve.verifications import MAX_COMMENT, TrailFilters

router = APIRouter(tags=["verification"], responses=error_responses(400, 401, 429, 500))
Ctx = Annotated[ServerContext, Depends(get_ctx)]
UserName = Annotated[str, Path(pattern=NAME_PATTERN, max_length=64, description="a user's name")]
WRITE = error_responses(403, 413, 422)  # 403: a cross-site request (and a technologist on admin routes)
MAX_WORKLIST = 100


def _boolean(value: Any) -> Any:
    """JSON true or false only (a Literal alone would take 1 for true)."""
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


Flag = BeforeValidator(_boolean)


class VerifyAsClass(BaseModel):
    """The cell is this class (one of the model's classes: GET /api/v1/model)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    label: str = Field(description="one of the model's classes")
    unusable: Annotated[Literal[False], Flag] = False
    comment: str = Field("", max_length=MAX_COMMENT, description="optional note kept with the verification")


class VerifyUnusable(BaseModel):
    """The image cannot be classified (no cell, artefact, out of focus, ...)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    unusable: Annotated[Literal[True], Flag]
    label: None = None
    comment: str = Field("", max_length=MAX_COMMENT, description="optional note kept with the verification")


class VerificationOut(BaseModel):
    """One stored verification (`label` null when marked unusable)."""

    id: str = Field(description="the verification's id (a UUID)")
    prediction_id: str = Field(description="the prediction's id (a UUID)")
    created_at: str
    user: str
    label: str | None
    unusable: bool
    comment: str


class TrailEntryOut(VerificationOut):
    """A verification with the model's call on the same prediction."""

    model_label: str | None = Field(description="the model's class (null: it gave none)")
    model_version: str
    agrees: bool = Field(description="this verification's call equals the model's")
    latest: bool = Field(description="not superseded by a later verification of the same prediction")


class TrailOut(BaseModel):
    items: list[TrailEntryOut]
    page: int
    per_page: int
    total: int
    pages: int


class TrailOfOne(BaseModel):
    """Every verification of one prediction, oldest first (the last one is its verified class)."""

    items: list[VerificationOut]


class UserOut(BaseModel):
    name: str
    role: str
    created_at: str
    disabled: bool
    clinic: str


class UsersOut(BaseModel):
    items: list[UserOut]


_DATE = r"(\d{4})-(\d{2})-(\d{2})"
_MOMENT = re.compile(rf"^{_DATE}(?:[Tt ](\d{{2}}):(\d{{2}}):(\d{{2}})(\.\d+)?([Zz]|[+-]\d{{2}}:\d{{2}}))?$")
MOMENT_SCHEMA = {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "string", "format": "date"},
                           {"type": "null"}]}  # RFC 3339: a time needs its offset


def _moment(name: str, text: str | None) -> str | None:
    """An RFC 3339 date-time (with its offset) or date (midnight UTC) as stored text (UTC, milliseconds);
    a time beyond the calendar (year 0 once in UTC, say) becomes the calendar's edge. 422 otherwise."""
    if text is None:
        return None
    match = _MOMENT.match(text)
    if match is None or not _valid(match):
        raise RequestValidationError([{"loc": ("query", name), "type": "datetime_format",
                                       "msg": "expected an RFC 3339 date-time with its offset (2026-01-31T08:00:00Z) "
                                              "or a date (2026-01-31)"}])
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    if hour is None:
        return f"{year}-{month}-{day}T00:00:00.000Z"
    moment = f"{year}-{month}-{day}T{hour}:{minute}:{min(int(second), 59):02d}{(fraction or '')[:7]}"
    zone = timezone.utc if offset in ("Z", "z") else timezone(
        (1 if offset[0] == "+" else -1) * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))
    try:
        return utc_text(datetime.fromisoformat(moment).replace(tzinfo=zone))
    except (OverflowError, ValueError):  # year 0, or past 9999 once in UTC
        return "0000" if int(year) < 5000 else "9999-99"


def _valid(match: re.Match[str]) -> bool:
    year, month, day, hour, minute, second, _, offset = match.groups()
    if not 1 <= int(month) <= 12 or not 1 <= int(day) <= calendar.monthrange(int(year), int(month))[1]:
        return False
    if hour is not None and (int(hour) > 23 or int(minute) > 59 or int(second) > 60):
        return False
    return offset is None or offset in ("Z", "z") or (int(offset[1:3]) <= 23 and int(offset[4:6]) <= 59)


def trail_filters(
    request: Request,
    since: Annotated[str | None, Query(description="verified at or after (RFC 3339 date-time, or a date: UTC)",
                                       json_schema_extra=MOMENT_SCHEMA)] = None,
    until: Annotated[str | None, Query(description="verified before (RFC 3339 date-time, or a date: UTC)",
                                       json_schema_extra=MOMENT_SCHEMA)] = None,
    user: Annotated[str | None, Query(max_length=64, description="only this user's verifications")] = None,
    disagrees: Annotated[bool | None, Query(description="only calls that differ (true) or agree (false) "
                                                       "with the model's")] = None,
    latest: Annotated[bool | None, Query(description="only current verifications (true) or only superseded ones "
                                                    "(false)")] = None,
) -> TrailFilters:
    return TrailFilters(since=_moment("since", since), until=_moment("until", until), user=user or None,
                        disagrees=disagrees, latest=latest, clinic=clinic_scope(request))


@router.post("/predictions/{prediction_id}/verifications", status_code=201, response_model=VerificationOut,
             responses={**WRITE, **error_responses(404)})
async def verify(
    request: Request, ctx: Ctx, prediction_id: PredictionId,
    call: Annotated[VerifyAsClass | VerifyUnusable, Body(description="`label` (a class) or `unusable: true`")],
) -> dict[str, Any]:
    """Verify a stored prediction: the cell's class, or unusable. Appended, never overwriting the model's call
    or an earlier verification (the latest one is the prediction's verified class). Needs a logged-in user or
    the token (401 otherwise); 404 for an unknown prediction, 422 for a class the model does not have."""
    principal = require_user(request)
    stored = await ctx.run_io(ctx.verifier.record, str(prediction_id), principal, call.label, call.comment)
    return stored.to_json()


@router.get("/predictions/{prediction_id}/verifications", response_model=TrailOfOne,
            responses=error_responses(404, 422))
async def verifications_of(request: Request, ctx: Ctx, prediction_id: PredictionId) -> dict[str, Any]:
    """The audit trail of one prediction: every verification, oldest first."""
    items = await ctx.run_io(ctx.verifier.trail, str(prediction_id), clinic_scope(request))
    return {"items": [v.to_json() for v in items]}


@router.get("/verifications", response_model=TrailOut, responses=error_responses(422))
async def verifications(
    ctx: Ctx, filters: Annotated[TrailFilters, Depends(trail_filters)],
    page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
    per_page: Annotated[int, Query(ge=1, le=MAX_PER_PAGE)] = 50,
) -> dict[str, Any]:
    """Every verification (the audit trail), newest first, paginated, each with the model's call beside it."""
    result = await ctx.run_io(ctx.verifier.listing, page, per_page, filters)
    return {"items": [entry.to_json() for entry in result.items], "page": result.page,
            "per_page": result.per_page, "total": result.total, "pages": result.pages}


@router.get("/worklist", responses=error_responses(404, 422))
async def worklist(
    request: Request, ctx: Ctx, limit: Annotated[int, Query(ge=1, le=MAX_WORKLIST)] = 50,
    after_id: Annotated[uuid.UUID | None, Query(description="continue after this prediction (the last one of "
                                                            "the previous call)")] = None,
    after_flagged: Annotated[bool, Query(description="whether the `after_id` prediction is flagged")] = True,
) -> dict[str, Any]:
    """Predictions awaiting verification (none yet) whose image is kept: flagged first, then the rest, newest
    first within each; `total` counts them all."""
    rows, total = await ctx.run_io(ctx.verifier.worklist, limit, clinic_scope(request),
                                   None if after_id is None else str(after_id), after_flagged)
    return {"items": [row.to_json() for row in rows], "total": total}


@router.get("/users", response_model=UsersOut, responses=error_responses(403))
async def users(request: Request, ctx: Ctx) -> dict[str, Any]:
    """Every user of the caller's clinic (admins only; `leukoscope users add` creates them)."""
    require_admin(request)
    return {"items": [u.to_json() for u in await ctx.run_io(ctx.verifier.all_users, clinic_scope(request))]}


@router.post("/users/{name}/disable", response_model=UserOut, responses={**WRITE, **error_responses(404)})
async def disable_user(request: Request, ctx: Ctx, name: UserName) -> dict[str, Any]:
    """Disable a user (admins only): their sessions end at once; their verifications stay."""
    require_admin(request)
    return (await ctx.run_io(ctx.verifier.set_disabled, name, True, clinic_scope(request))).to_json()


@router.post("/users/{name}/enable", response_model=UserOut, responses={**WRITE, **error_responses(404)})
async def enable_user(request: Request, ctx: Ctx, name: UserName) -> dict[str, Any]:
    """Enable a disabled user again (admins only)."""
    require_admin(request)
    return (await ctx.run_io(ctx.verifier.set_disabled, name, False, clinic_scope(request))).to_json()

"""Clinics (tenants): one service for a hospital network, each clinic seeing only its own data.

Every user, API token, prediction (with its image link, verifications and exports) belongs to one clinic.
A single workstation never sees any of this: revision 0007 makes one implicit clinic ("default", id 1),
everything lands there, and the shared token (LEUKOSCOPE_API_TOKEN) acts in it. A network adds clinics
(`leukoscope clinics add NAME`), users in them (`users add --clinic`), and per-clinic API tokens
(`leukoscope tokens create --clinic`, serve/tokens.py).

Clinics are never deleted, only marked so (`remove`): their rows stay for the audit, their tokens stop
working at once (401) and their users can no longer log in. Each clinic may predict with its own package
(`set-model`: a folder made by `leukoscope adapt`, or the bundled default); the server loads each package
once (serve/models.py) and every prediction records the package and its exact weights.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from leukoscope.errors import DataError, UsageError
from leukoscope.serve.store import DEFAULT_CLINIC_ID, Store, utc_now

DEFAULT_CLINIC = "default"  # the implicit clinic's name (revision 0007)
CLINIC_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_CLINIC_RE = re.compile(CLINIC_PATTERN)
SAME_NAME = "lower(name) = lower(:name)"
DEFAULT_MODELS = ("default", "bundled")  # `set-model NAME default`: back to the server's own package


@dataclass(frozen=True)
class Clinic:
    """One clinic; `model` is its package folder (None: the server's --model, the bundled one by default)."""

    id: int
    uid: str
    name: str
    created_at: str
    deleted_at: str | None
    model: str | None

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "created_at": self.created_at, "deleted": self.deleted,
                "model": self.model or DEFAULT_CLINIC_MODEL}


DEFAULT_CLINIC_MODEL = "(server default)"


def check_clinic_name(name: str) -> str:
    """A clinic name: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit."""
    if not _CLINIC_RE.match(name or ""):
        raise UsageError(f"invalid clinic name {name[:80]!r}: use 1-64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return name


def _clinic(row: Mapping[str, Any]) -> Clinic:
    return Clinic(int(row["id"]), row["uid"], row["name"], row["created_at"], row["deleted_at"], row["model"])


def package_value(package: str) -> str | None:
    """What `set-model` stores: None for the server's default, else the package folder as an absolute path
    (every server process resolves it alike). UsageError (one line) for a folder that holds no package."""
    if package.lower() in DEFAULT_MODELS:
        return None
    folder = Path(package).expanduser().resolve()
    if not (folder / "model.json").is_file():
        raise UsageError(f"{package} is not a model package (no model.json in it): give a folder made by "
                         "`leukoscope adapt` or `leukoscope export`, or 'default'")
    return str(folder)


class Clinics:
    """The clinics table of one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, name: str, *, include_deleted: bool = False) -> Clinic | None:
        rows = self.store.query(f"SELECT * FROM clinics WHERE {SAME_NAME}", {"name": name})
        if not rows or (rows[0]["deleted_at"] is not None and not include_deleted):
            return None
        return _clinic(rows[0])

    def by_id(self, clinic_id: int) -> Clinic | None:
        rows = self.store.query("SELECT * FROM clinics WHERE id = :id", {"id": clinic_id})
        return _clinic(rows[0]) if rows else None

    def require(self, name: str | None) -> Clinic:
        """The live clinic called `name` (None: the implicit one); UsageError (exit 2) when there is none."""
        if name is None:
            found = self.by_id(DEFAULT_CLINIC_ID)
            assert found is not None
            return found
        found = self.get(name)
        if found is None:
            known = ", ".join(c.name for c in self.all_clinics()) or "none"
            raise UsageError(f"unknown clinic {name[:80]!r} (clinics: {known}; `leukoscope clinics add NAME`)")
        return found

    def all_clinics(self, *, include_deleted: bool = False) -> list[Clinic]:
        where = "" if include_deleted else " WHERE deleted_at IS NULL"
        return [_clinic(r) for r in self.store.query(f"SELECT * FROM clinics{where} ORDER BY id")]

    def add(self, name: str) -> Clinic:
        """A new clinic. UsageError for a bad name; DataError when the name is taken (also by a removed one)."""
        check_clinic_name(name)
        now, uid = utc_now(), str(uuid.uuid4())

        def work(conn: Connection) -> Clinic:
            taken = conn.execute(text(f"SELECT name FROM clinics WHERE {SAME_NAME}"), {"name": name}).scalar()
            if taken is not None:
                raise DataError(f"a clinic named {taken!r} already exists")
            new_id = conn.execute(text("INSERT INTO clinics (uid, name, created_at) VALUES (:uid, :name, :now) "
                                       "RETURNING id"), {"uid": uid, "name": name, "now": now}).scalar_one()
            return Clinic(int(new_id), uid, name, now, None, None)

        try:
            return self.store.write(work)
        except IntegrityError:  # another process added the name between the check and the insert
            raise DataError(f"a clinic named {name!r} already exists") from None

    def remove(self, name: str) -> Clinic:
        """Mark a clinic deleted: its tokens stop working (401), its users cannot log in; rows stay."""
        clinic = self.require(name)
        if clinic.id == DEFAULT_CLINIC_ID:
            raise UsageError(f"the implicit clinic {clinic.name!r} cannot be removed")
        now = utc_now()
        self.store.write(lambda conn: conn.execute(text("UPDATE clinics SET deleted_at = :now WHERE id = :id"),
                                                   {"now": now, "id": clinic.id}))
        return Clinic(clinic.id, clinic.uid, clinic.name, clinic.created_at, now, clinic.model)

    def set_model(self, name: str, package: str) -> Clinic:
        """The package the clinic predicts with (`package_value`); servers pick it up within seconds."""
        clinic = self.require(name)
        value = package_value(package)
        self.store.write(lambda conn: conn.execute(text("UPDATE clinics SET model = :model WHERE id = :id"),
                                                   {"model": value, "id": clinic.id}))
        return Clinic(clinic.id, clinic.uid, clinic.name, clinic.created_at, clinic.deleted_at, value)

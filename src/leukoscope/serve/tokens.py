"""Per-clinic API tokens: machine clients (a lab system, a script) act in one clinic with a token.

A token is 256 random bits (`lks_` + URL-safe base64), shown once when created and stored only as its
SHA-256: a fast hash is the standard for API tokens because the secret has full entropy (nothing to
guess, unlike a password, which needs argon2's slowness), and a lookup by hash is one indexed query per
request. A copy of the database therefore holds no usable token. Tokens are revoked, never deleted (the
verification trail names them as "token:LABEL"); a revoked token, or any token of a removed clinic,
answers 401 from the next request on, in every server process.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from leukoscope.errors import DataError, UsageError
from leukoscope.serve.clinics import Clinic
from leukoscope.serve.sessions import ADMIN, TECHNOLOGIST, Principal
from leukoscope.serve.store import Store, utc_now
from leukoscope.serve.users import check_name

PREFIX = "lks_"
TOKEN_ROLES = (TECHNOLOGIST, ADMIN)
MAX_TOKEN_LENGTH = 256


@dataclass(frozen=True)
class ApiToken:
    """One token, without its secret."""

    uid: str
    clinic: str
    name: str
    role: str
    created_at: str
    revoked_at: str | None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.uid, "clinic": self.clinic, "name": self.name, "role": self.role,
                "created_at": self.created_at, "revoked": self.revoked_at is not None}


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _token(row: Mapping[str, Any]) -> ApiToken:
    return ApiToken(row["uid"], row["clinic"], row["name"], row["role"], row["created_at"], row["revoked_at"])


_SELECT = ("SELECT t.uid, c.name AS clinic, t.name, t.role, t.created_at, t.revoked_at FROM api_tokens AS t "
           "JOIN clinics AS c ON c.id = t.clinic_id")


class ApiTokens:
    """The api_tokens table of one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, clinic: Clinic, name: str | None = None, role: str = ADMIN) -> tuple[ApiToken, str]:
        """A new token of `clinic`: (its record, the secret, to show once)."""
        if role not in TOKEN_ROLES:
            raise UsageError(f"unknown role {role!r} for a token: choose {' or '.join(TOKEN_ROLES)}")
        label = check_name(name) if name else f"{clinic.name}-{secrets.token_hex(3)}"
        secret = PREFIX + secrets.token_urlsafe(32)
        uid, now = str(uuid.uuid4()), utc_now()
        self.store.write(lambda conn: conn.execute(text(
            "INSERT INTO api_tokens (uid, clinic_id, name, role, token_hash, created_at) "
            "VALUES (:uid, :clinic, :name, :role, :hash, :now)"),
            {"uid": uid, "clinic": clinic.id, "name": label, "role": role, "hash": digest(secret), "now": now}))
        return ApiToken(uid, clinic.name, label, role, now, None), secret

    def all_tokens(self, clinic: Clinic | None = None) -> list[ApiToken]:
        where, params = (" WHERE t.clinic_id = :clinic", {"clinic": clinic.id}) if clinic else ("", {})
        return [_token(r) for r in self.store.query(f"{_SELECT}{where} ORDER BY t.id", params)]

    def revoke(self, ident: str) -> ApiToken:
        """Revoke a token by its id (as `tokens list` shows it) or its label; DataError when unknown."""
        rows = self.store.query(f"{_SELECT} WHERE t.uid = :ident OR t.name = :ident", {"ident": ident})
        if not rows:
            raise DataError(f"no token with id or name {ident[:80]!r} (see `leukoscope tokens list`)")
        if len(rows) > 1:
            raise UsageError(f"several tokens are named {ident!r}: revoke by id (see `leukoscope tokens list`)")
        found = _token(rows[0])
        now = utc_now()
        self.store.write(lambda conn: conn.execute(text(
            "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, :now) WHERE uid = :uid"),
            {"now": now, "uid": found.uid}))
        return ApiToken(found.uid, found.clinic, found.name, found.role, found.created_at, found.revoked_at or now)

    def principal(self, token: str | None) -> Principal | None:
        """Who a presented token is: a live token of a live clinic, or None (then: 401)."""
        if not token or not token.startswith(PREFIX) or len(token) > MAX_TOKEN_LENGTH:
            return None
        return self._principal("t.token_hash = :key", digest(token))

    def still_valid(self, session: Principal) -> Principal | None:
        """A session opened with a clinic token, as long as the token and its clinic live."""
        return self._principal("t.uid = :key", session.stamp)

    def _principal(self, where: str, key: str) -> Principal | None:
        rows = self.store.query(
            "SELECT t.uid, t.name, t.role, t.clinic_id FROM api_tokens AS t JOIN clinics AS c ON c.id = t.clinic_id "
            f"WHERE {where} AND t.revoked_at IS NULL AND c.deleted_at IS NULL", {"key": key})
        if not rows:
            return None
        row = rows[0]
        return Principal(f"token:{row['name']}", row["role"], "clinic-token", row["uid"], int(row["clinic_id"]))

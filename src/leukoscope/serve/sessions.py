"""Login sessions kept by the server: a random id in the browser's cookie; who it is and its expiry here.

A cookie holding the token (or a hash of it) could not be revoked: logging out would delete it in one
browser, but a copy would stay valid until the token changed. Here the cookie holds a random id that means
nothing without the `login_sessions` table; logout removes the id, and an id older than the session lifetime
(12 h by default) is refused. The table is in the database, so every server process (`--processes N`, or
several servers on one PostgreSQL) knows every session, and a restart logs nobody out. Only the SHA-256 of
an id is stored: a copy of the database holds no usable cookie. Bounded: beyond `max_sessions` the oldest
session is dropped, and expired ones are deleted as new ones are made.

Each session carries its `Principal`: a named user (logged in with a password) or the shared token's holder,
who acts as an admin. The auth middleware re-reads a named user's row on every request (`users.Accounts`),
so disabling a user or changing their password ends their sessions at once, from any process.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import text

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from leukoscope.serve.store import Store

DEFAULT_HOURS = 12.0
MAX_SESSIONS = 10_000
TECHNOLOGIST, ADMIN, NETWORK_ADMIN = "technologist", "admin", "network-admin"
ROLES = (TECHNOLOGIST, ADMIN, NETWORK_ADMIN)
DEFAULT_CLINIC_ID = 1  # the implicit clinic (revision 0007; store.DEFAULT_CLINIC_ID)
TOKEN_USER = "api-token"  # who the shared token's holder is in the verification trail (no user may take the name)


@dataclass(frozen=True)
class Principal:
    """Who a request comes from: a named user (`via` "password"), the shared token's holder ("token") or a
    clinic's API token ("clinic-token"), and the clinic they act in."""

    name: str
    role: str
    via: str = "password"
    stamp: str = ""  # password: a fingerprint of the password hash at login; clinic-token: the token's id
    clinic_id: int = DEFAULT_CLINIC_ID

    @property
    def is_admin(self) -> bool:
        return self.role in (ADMIN, NETWORK_ADMIN)

    @property
    def scope(self) -> int | None:
        """The clinic whose data this principal sees; None for a network admin (every clinic)."""
        return None if self.role == NETWORK_ADMIN else self.clinic_id


TOKEN_PRINCIPAL = Principal(TOKEN_USER, ADMIN, "token")


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()


class SessionStore:
    """Session ids with their principal and expiry time, in the store's `login_sessions` table.

    Made before the database is open (the app's middleware needs it), and bound to the store at start-up
    (`bind`); `clock` is wall-clock seconds, the same in every process.
    """

    def __init__(self, lifetime_s: float = DEFAULT_HOURS * 3600, *, clock: Callable[[], float] = time.time,
                 max_sessions: int = MAX_SESSIONS, store: Store | None = None) -> None:
        self.lifetime_s, self.clock, self.max_sessions = lifetime_s, clock, max_sessions
        self.store = store

    def bind(self, store: Store) -> SessionStore:
        self.store = store
        return self

    @property
    def _store(self) -> Store:
        if self.store is None:
            raise RuntimeError("the session table is used before the database was opened")
        return self.store

    def create(self, principal: Principal = TOKEN_PRINCIPAL) -> str:
        """A new session id (256 random bits, URL-safe) for `principal`, valid for `lifetime_s` from now."""
        session_id = secrets.token_urlsafe(32)
        now = self.clock()

        def work(conn: Connection) -> None:
            conn.execute(text("DELETE FROM login_sessions WHERE expires_at <= :now"), {"now": now})
            conn.execute(text("INSERT INTO login_sessions (id_hash, name, role, via, stamp, expires_at, clinic_id) "
                              "VALUES (:id, :name, :role, :via, :stamp, :expires, :clinic)"),
                         {"id": _digest(session_id), "name": principal.name, "role": principal.role,
                          "clinic": principal.clinic_id,
                          "via": principal.via, "stamp": principal.stamp, "expires": now + self.lifetime_s})
            conn.execute(text("DELETE FROM login_sessions WHERE seq <= (SELECT seq FROM login_sessions "
                              "ORDER BY seq DESC LIMIT 1 OFFSET :keep)"), {"keep": self.max_sessions})

        self._store.write(work)
        return session_id

    def get(self, session_id: str | None) -> Principal | None:
        """The principal of a session issued here, not revoked and not expired (an expired one is forgotten)."""
        if not session_id or len(session_id) > 256:
            return None
        rows = self._store.query("SELECT name, role, via, stamp, expires_at, clinic_id FROM login_sessions "
                                 "WHERE id_hash = :id",
                                 {"id": _digest(session_id)})  # an indexed lookup of a hash: nothing to time
        if not rows:
            return None
        row = rows[0]
        if row["expires_at"] <= self.clock():
            self.revoke(session_id)
            return None
        return Principal(row["name"], row["role"], row["via"], row["stamp"], int(row["clinic_id"]))

    def is_valid(self, session_id: str | None) -> bool:
        """Whether `session_id` was issued here, not revoked and not expired."""
        return self.get(session_id) is not None

    def revoke(self, session_id: str | None) -> None:
        """Logout: the id stops working at once, in every browser that holds a copy, in every process."""
        if session_id:
            self._store.write(lambda conn: conn.execute(text("DELETE FROM login_sessions WHERE id_hash = :id"),
                                                        {"id": _digest(session_id)}))

    def revoke_user(self, name: str) -> int:
        """End every password session of user `name` (disabled by an admin); returns how many."""
        return int(self._store.write(lambda conn: conn.execute(text(
            "DELETE FROM login_sessions WHERE via = 'password' AND name = :name"), {"name": name}).rowcount))

    def __len__(self) -> int:
        return int(self._store.scalar("SELECT COUNT(*) FROM login_sessions"))

    def __bool__(self) -> bool:
        return True  # a store, even an empty one

"""Login sessions kept by the server: a random id in the browser's cookie; who it is and its expiry here.

A cookie holding the token (or a hash of it) could not be revoked: logging out would delete it in one
browser, but a copy would stay valid until the token changed. Here the cookie holds a random id that means
nothing without this table; logout removes the id, and an id older than the session lifetime (12 h by
default) is refused. The table is in memory, behind this small class, because the server is one process:
a restart logs everyone out, which is safe. Bounded: beyond `max_sessions` the oldest session is dropped.

Each session carries its `Principal`: a named user (logged in with a password) or the shared token's holder,
who acts as an admin. The auth middleware re-reads a named user's row on every request (`users.Accounts`),
so disabling a user or changing their password ends their sessions at once, from any process.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_HOURS = 12.0
MAX_SESSIONS = 10_000
TECHNOLOGIST, ADMIN = "technologist", "admin"
ROLES = (TECHNOLOGIST, ADMIN)
TOKEN_USER = "api-token"  # who the shared token's holder is in the verification trail (no user may take the name)


@dataclass(frozen=True)
class Principal:
    """Who a request comes from: a named user (`via` "password") or the shared token's holder ("token")."""

    name: str
    role: str
    via: str = "password"
    stamp: str = ""  # password sessions: a fingerprint of the password hash at login (a new password ends them)

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN


TOKEN_PRINCIPAL = Principal(TOKEN_USER, ADMIN, "token")


class SessionStore:
    """Session ids with their principal and expiry time; safe to use from several threads."""

    def __init__(self, lifetime_s: float = DEFAULT_HOURS * 3600, *, clock: Callable[[], float] = time.time,
                 max_sessions: int = MAX_SESSIONS) -> None:
        self.lifetime_s, self.clock, self.max_sessions = lifetime_s, clock, max_sessions
        self._sessions: OrderedDict[str, tuple[float, Principal]] = OrderedDict()
        self._lock = threading.Lock()

    def create(self, principal: Principal = TOKEN_PRINCIPAL) -> str:
        """A new session id (256 random bits, URL-safe) for `principal`, valid for `lifetime_s` from now."""
        session_id = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions[session_id] = (self.clock() + self.lifetime_s, principal)
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return session_id

    def get(self, session_id: str | None) -> Principal | None:
        """The principal of a session issued here, not revoked and not expired (an expired one is forgotten)."""
        if not session_id:
            return None
        with self._lock:
            entry = self._sessions.get(session_id)  # a hash lookup: 256 random bits leave nothing to time
            if entry is None:
                return None
            if entry[0] <= self.clock():
                del self._sessions[session_id]
                return None
            return entry[1]

    def is_valid(self, session_id: str | None) -> bool:
        """Whether `session_id` was issued here, not revoked and not expired."""
        return self.get(session_id) is not None

    def revoke(self, session_id: str | None) -> None:
        """Logout: the id stops working at once, in every browser that holds a copy."""
        if session_id:
            with self._lock:
                self._sessions.pop(session_id, None)

    def revoke_user(self, name: str) -> int:
        """End every password session of user `name` (disabled by an admin); returns how many."""
        with self._lock:
            ids = [sid for sid, (_, p) in self._sessions.items() if p.via == "password" and p.name == name]
            for sid in ids:
                del self._sessions[sid]
        return len(ids)

    def __len__(self) -> int:
        return len(self._sessions)

"""Login sessions kept by the server: a random id in the browser's cookie, its expiry here.

A cookie holding the token (or a hash of it) could not be revoked: logging out would delete it in one
browser, but a copy would stay valid until the token changed. Here the cookie holds a random id that means
nothing without this table; logout removes the id, and an id older than the session lifetime (12 h by
default) is refused. The table is in memory, behind this small class, because the server is one process:
a restart logs everyone out, which is safe. Bounded: beyond `max_sessions` the oldest session is dropped.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

DEFAULT_HOURS = 12.0
MAX_SESSIONS = 10_000


class SessionStore:
    """Session ids with their expiry times; safe to use from several threads."""

    def __init__(self, lifetime_s: float = DEFAULT_HOURS * 3600, *, clock: Callable[[], float] = time.time,
                 max_sessions: int = MAX_SESSIONS) -> None:
        self.lifetime_s, self.clock, self.max_sessions = lifetime_s, clock, max_sessions
        self._expiry: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def create(self) -> str:
        """A new session id (256 random bits, URL-safe) valid for `lifetime_s` from now."""
        session_id = secrets.token_urlsafe(32)
        with self._lock:
            self._expiry[session_id] = self.clock() + self.lifetime_s
            while len(self._expiry) > self.max_sessions:
                self._expiry.popitem(last=False)
        return session_id

    def is_valid(self, session_id: str | None) -> bool:
        """Whether `session_id` was issued here, not revoked and not expired (an expired one is forgotten)."""
        if not session_id:
            return False
        with self._lock:
            expiry = self._expiry.get(session_id)  # a hash lookup: 256 random bits leave nothing to time
            if expiry is None:
                return False
            if expiry <= self.clock():
                del self._expiry[session_id]
                return False
            return True

    def revoke(self, session_id: str | None) -> None:
        """Logout: the id stops working at once, in every browser that holds a copy."""
        if session_id:
            with self._lock:
                self._expiry.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._expiry)

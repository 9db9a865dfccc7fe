"""Slow down guessing: after too many wrong tokens from one address, or wrong passwords for one user name
from one address, further tries wait.

Ten wrong tokens in five minutes lock the address until the oldest of them is five minutes old: further
*wrong* tokens from it get HTTP 429 with Retry-After, for the login form and for API credentials alike.
A right token always works and clears the count, so one attacker behind a lab's proxy cannot lock out
everyone else behind it. That this lets a locked guesser still learn a right guess is acceptable because
tokens must be at least 16 characters (`settings.MIN_TOKEN_LENGTH`): guessing one is hopeless at any rate;
the lockout keeps wrong guesses cheap to refuse and visible.

Passwords are chosen by people, so there a lock must hold for right guesses too (otherwise a locked guesser
would still learn the right one): ten wrong passwords for one name from one address in five minutes refuse
every password for that name from that address until the oldest is five minutes old (`password_key`). The
count is per name and address so that one person mistyping behind a lab's proxy does not lock out their
colleagues, and checked before the (deliberately slow) password hash is computed.

The failures are rows of the `auth_failures` table (one per wrong try: the key and the wall-clock time), so
every server process counts the same tries and a guesser cannot spread them over processes; a restart
forgets nothing. Rows older than the window are deleted as new ones come; beyond `max_rows` recent rows
the oldest go first, so the table stays bounded even under a flood from many addresses. Two processes
checking the same key at the same instant may each let one more try through (the count and the insert are
one transaction, but READ COMMITTED does not serialise them): at most one per process, never a bypass.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import text

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from leukoscope.serve.store import Store

MAX_FAILURES = 10
WINDOW_S = 300.0
MAX_ROWS = 100_000  # recent failures kept at most (the oldest are forgotten beyond this)


class Lockout:
    """Wrong tries per key (a client address, or `password_key`) within a sliding window, in the database.

    Made before the database is open and bound to the store at start-up (`bind`); `clock` is wall-clock
    seconds (time.time), the same in every process.
    """

    def __init__(self, limit: int = MAX_FAILURES, window_s: float = WINDOW_S, *,
                 clock: Callable[[], float] = time.time, max_rows: int = MAX_ROWS, store: Store | None = None) -> None:
        self.limit, self.window_s, self.clock, self.max_rows = limit, window_s, clock, max_rows
        self.store = store

    def bind(self, store: Store) -> Lockout:
        self.store = store
        return self

    @property
    def _store(self) -> Store:
        if self.store is None:
            raise RuntimeError("the lockout table is used before the database was opened")
        return self.store

    def _wait(self, conn: Connection, key: str, now: float) -> int:
        """Seconds `key` must wait at `now` (0: it may try), read on `conn`."""
        times = conn.execute(text("SELECT at FROM auth_failures WHERE lock_key = :key AND at > :cutoff "
                                  "ORDER BY at DESC LIMIT :limit"),
                             {"key": key, "cutoff": now - self.window_s, "limit": self.limit}).scalars().all()
        if len(times) < self.limit:
            return 0
        return max(1, math.ceil(times[-1] + self.window_s - now))

    def _count(self, conn: Connection, key: str, now: float) -> None:
        conn.execute(text("DELETE FROM auth_failures WHERE at <= :cutoff"), {"cutoff": now - self.window_s})
        conn.execute(text("INSERT INTO auth_failures (lock_key, at) VALUES (:key, :now)"), {"key": key, "now": now})
        conn.execute(text("DELETE FROM auth_failures WHERE seq <= (SELECT seq FROM auth_failures "
                          "ORDER BY seq DESC LIMIT 1 OFFSET :keep)"), {"keep": self.max_rows})

    def retry_after(self, key: str) -> int:
        """Whole seconds this key must wait before its next try; 0 when it may try now."""
        now = self.clock()
        return self._store.write(lambda conn: self._wait(conn, key, now))

    def failed(self, key: str) -> None:
        """Count one wrong try of `key`."""
        now = self.clock()
        self._store.write(lambda conn: self._count(conn, key, now))

    def succeeded(self, key: str) -> None:
        """A right token or password: forget the key's failures."""
        self._store.write(lambda conn: conn.execute(text("DELETE FROM auth_failures WHERE lock_key = :key"),
                                                    {"key": key}))

    def attempt(self, key: str, correct: bool) -> int:
        """One token try from `key`. A right token is always heard (0) and clears the key. A wrong one is
        counted and heard (0) while the key is not locked; once locked, it is refused: the seconds to wait
        are returned and nothing more is counted. One transaction."""
        if correct:
            self.succeeded(key)
            return 0
        now = self.clock()

        def work(conn: Connection) -> int:
            wait = self._wait(conn, key, now)
            if not wait:
                self._count(conn, key, now)
            return wait

        return self._store.write(work)


def message(wait_s: int) -> str:
    """The one-line answer a locked-out client gets."""
    return f"too many wrong tokens from this address: try again in {wait_s} s"


def password_key(address: str, name: str) -> str:
    """The lockout key of password guesses for one user name from one address (the name as a hash: whatever
    was typed, the key is short text any database stores)."""
    return f"password {address} {hashlib.sha256(name.lower().encode('utf-8', 'replace')).hexdigest()[:32]}"


def password_message(wait_s: int) -> str:
    """The one-line answer to a password try while its name and address are locked."""
    return f"too many wrong passwords for this name from this address: try again in {wait_s} s"

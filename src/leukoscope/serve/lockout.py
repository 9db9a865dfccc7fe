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
colleagues, and checked before the (deliberately slow) password hash is computed. The state is in memory
(one server process), bounded, and forgotten on restart.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

MAX_FAILURES = 10
WINDOW_S = 300.0
MAX_ADDRESSES = 10_000  # the oldest tracked address is forgotten beyond this (memory stays bounded)


class Lockout:
    """Wrong-token attempts per client address within a sliding window."""

    def __init__(self, limit: int = MAX_FAILURES, window_s: float = WINDOW_S, *,
                 clock: Callable[[], float] = time.monotonic, max_addresses: int = MAX_ADDRESSES) -> None:
        self.limit, self.window_s, self.clock, self.max_addresses = limit, window_s, clock, max_addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, address: str) -> deque[float]:
        times = self._failures.get(address, deque())
        cutoff = self.clock() - self.window_s
        while times and times[0] <= cutoff:
            times.popleft()
        return times

    def retry_after(self, address: str) -> int:
        """Whole seconds this address must wait before its next try; 0 when it may try now."""
        times = self._recent(address)
        if len(times) < self.limit:
            return 0
        return max(1, math.ceil(times[-self.limit] + self.window_s - self.clock()))

    def failed(self, address: str) -> None:
        """Count one wrong token from `address`."""
        times = self._recent(address)
        times.append(self.clock())
        self._failures[address] = times
        self._failures.move_to_end(address)
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        """A right token: forget the address's failures."""
        self._failures.pop(address, None)

    def attempt(self, address: str, correct: bool) -> int:
        """One token try from `address`. A right token is always heard (0) and clears the address. A wrong
        one is counted and heard (0) while the address is not locked; once locked, it is refused: the
        seconds to wait are returned and nothing more is counted."""
        if correct:
            self.succeeded(address)
            return 0
        wait = self.retry_after(address)
        if not wait:
            self.failed(address)
        return wait


def message(wait_s: int) -> str:
    """The one-line answer a locked-out client gets."""
    return f"too many wrong tokens from this address: try again in {wait_s} s"


def password_key(address: str, name: str) -> str:
    """The lockout key of password guesses for one user name from one address."""
    return f"password\x00{address}\x00{name.lower()}"


def password_message(wait_s: int) -> str:
    """The one-line answer to a password try while its name and address are locked."""
    return f"too many wrong passwords for this name from this address: try again in {wait_s} s"

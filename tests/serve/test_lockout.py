"""leukoscope.serve.lockout: wrong tokens per address in a sliding window, with a fake clock."""

from __future__ import annotations

from leukoscope.serve.lockout import Lockout, message


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_limit_locks_the_address_until_its_oldest_failure_leaves_the_window() -> None:
    clock = Clock()
    lockout = Lockout(limit=3, window_s=60, clock=clock)
    for _ in range(2):
        lockout.failed("10.0.0.5")
        clock.now += 10
    assert lockout.retry_after("10.0.0.5") == 0  # two wrong tokens: still allowed
    lockout.failed("10.0.0.5")  # at t=1020; the first was at t=1000
    assert lockout.retry_after("10.0.0.5") == 40
    assert lockout.retry_after("10.0.0.6") == 0  # another address is not affected
    clock.now = 1060.5  # the first failure has left the window
    assert lockout.retry_after("10.0.0.5") == 0


def test_a_right_token_clears_the_count() -> None:
    lockout = Lockout(limit=2, window_s=60, clock=Clock())
    lockout.failed("a")
    lockout.succeeded("a")
    lockout.failed("a")
    assert lockout.retry_after("a") == 0


def test_a_locked_address_is_refused_only_its_wrong_tokens() -> None:
    lockout = Lockout(limit=2, window_s=60, clock=Clock())
    assert lockout.attempt("a", False) == 0 and lockout.attempt("a", False) == 0
    assert lockout.attempt("a", False) == 60  # locked: a wrong token waits, and is not counted
    assert lockout.retry_after("a") == 60
    assert lockout.attempt("a", True) == 0  # the right token is always heard (one proxy, many users)
    assert lockout.retry_after("a") == 0 and lockout.attempt("a", False) == 0  # and it cleared the count
    other = Lockout(limit=2, window_s=60, clock=Clock())
    other.attempt("b", False)
    assert other.attempt("b", True) == 0 and other.retry_after("b") == 0  # a right token clears the count
    other.attempt("b", False)
    assert other.retry_after("b") == 0


def test_memory_stays_bounded() -> None:
    lockout = Lockout(limit=1, window_s=60, clock=Clock(), max_addresses=3)
    for n in range(5):
        lockout.failed(f"10.0.0.{n}")
    assert lockout.retry_after("10.0.0.0") == 0 and lockout.retry_after("10.0.0.4") > 0
    assert len(lockout._failures) == 3


def test_the_message_says_how_long_to_wait() -> None:
    assert message(42) == "too many wrong tokens from this address: try again in 42 s"

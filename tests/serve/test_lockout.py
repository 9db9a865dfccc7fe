"""leukoscope.serve.lockout: wrong tokens per address in a sliding window, with a fake clock, in the database
(SQLite and PostgreSQL), so that every server process counts the same tries."""

from __future__ import annotations

import pytest

from leukoscope.serve.lockout import Lockout, message
from leukoscope.serve.store import Store


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(any_store: Store) -> Store:
    return any_store


def test_the_limit_locks_the_address_until_its_oldest_failure_leaves_the_window(store: Store) -> None:
    clock = Clock()
    lockout = Lockout(limit=3, window_s=60, clock=clock, store=store)
    for _ in range(2):
        lockout.failed("10.0.0.5")
        clock.now += 10
    assert lockout.retry_after("10.0.0.5") == 0  # two wrong tokens: still allowed
    lockout.failed("10.0.0.5")  # at t=1020; the first was at t=1000
    assert lockout.retry_after("10.0.0.5") == 40
    assert lockout.retry_after("10.0.0.6") == 0  # another address is not affected
    clock.now = 1060.5  # the first failure has left the window
    assert lockout.retry_after("10.0.0.5") == 0


def test_a_right_token_clears_the_count(store: Store) -> None:
    lockout = Lockout(limit=2, window_s=60, clock=Clock(), store=store)
    lockout.failed("a")
    lockout.succeeded("a")
    lockout.failed("a")
    assert lockout.retry_after("a") == 0


def test_a_locked_address_is_refused_only_its_wrong_tokens(store: Store) -> None:
    lockout = Lockout(limit=2, window_s=60, clock=Clock(), store=store)
    assert lockout.attempt("a", False) == 0 and lockout.attempt("a", False) == 0
    assert lockout.attempt("a", False) == 60  # locked: a wrong token waits, and is not counted
    assert lockout.retry_after("a") == 60
    assert lockout.attempt("a", True) == 0  # the right token is always heard (one proxy, many users)
    assert lockout.retry_after("a") == 0 and lockout.attempt("a", False) == 0  # and it cleared the count
    other = Lockout(limit=2, window_s=60, clock=Clock(), store=store)
    other.attempt("b", False)
    assert other.attempt("b", True) == 0 and other.retry_after("b") == 0  # a right token clears the count
    other.attempt("b", False)
    assert other.retry_after("b") == 0


def test_the_table_stays_bounded(store: Store) -> None:
    clock = Clock()
    lockout = Lockout(limit=1, window_s=60, clock=clock, max_rows=3, store=store)
    for n in range(5):
        lockout.failed(f"10.0.0.{n}")
    assert lockout.retry_after("10.0.0.0") == 0 and lockout.retry_after("10.0.0.4") > 0
    assert store.scalar("SELECT COUNT(*) FROM auth_failures") == 3
    clock.now += 61
    lockout.failed("10.0.0.9")  # failures older than the window are deleted as new ones come
    assert store.scalar("SELECT COUNT(*) FROM auth_failures") == 1


def test_tries_through_different_processes_add_up(db_url: str) -> None:
    clock = Clock()
    with Store(db_url) as one, Store(db_url) as other:
        first = Lockout(limit=4, window_s=60, clock=clock, store=one)
        second = Lockout(limit=4, window_s=60, clock=clock, store=other)
        for lockout in (first, second, first, second):
            assert lockout.attempt("10.0.0.7", False) == 0
        assert first.attempt("10.0.0.7", False) == 60 and second.attempt("10.0.0.7", False) == 60


def test_the_message_says_how_long_to_wait() -> None:
    assert message(42) == "too many wrong tokens from this address: try again in 42 s"

"""leukoscope.serve.sessions: random session ids that expire and can be revoked, with a fake clock, in the
database (SQLite and PostgreSQL): every process sees the same sessions, and a copy of the table is no key."""

from __future__ import annotations

import hashlib

import pytest

from leukoscope.serve.sessions import TOKEN_PRINCIPAL, Principal, SessionStore
from leukoscope.serve.store import Store


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(any_store: Store) -> Store:
    return any_store


def test_a_session_works_until_it_expires(store: Store) -> None:
    clock = Clock()
    sessions = SessionStore(3600, clock=clock, store=store)
    sid = sessions.create()
    assert len(sid) >= 40 and sessions.is_valid(sid)
    clock.now += 3599
    assert sessions.is_valid(sid)
    clock.now += 1
    assert not sessions.is_valid(sid) and len(sessions) == 0  # expired ids are forgotten


def test_revoked_and_unknown_ids_are_refused(store: Store) -> None:
    sessions = SessionStore(3600, clock=Clock(), store=store)
    first, second = sessions.create(), sessions.create()
    assert first != second
    sessions.revoke(first)
    assert not sessions.is_valid(first) and sessions.is_valid(second)
    assert not sessions.is_valid("made-up") and not sessions.is_valid("") and not sessions.is_valid(None)
    assert not sessions.is_valid("x" * 10_000)
    sessions.revoke(None)  # logging out without a session is harmless


def test_the_table_stays_bounded(store: Store) -> None:
    sessions = SessionStore(3600, clock=Clock(), max_sessions=2, store=store)
    ids = [sessions.create() for _ in range(3)]
    assert len(sessions) == 2 and not sessions.is_valid(ids[0]) and sessions.is_valid(ids[2])


def test_another_process_sees_the_same_sessions_and_only_hashes_are_stored(db_url: str) -> None:
    with Store(db_url) as one, Store(db_url) as other:  # two engines: as two server processes have
        mine = SessionStore(3600, store=one)
        theirs = SessionStore(3600, store=other)
        alice = Principal("alice", "technologist", "password", "s1")
        sid = mine.create(alice)
        assert theirs.get(sid) == alice
        token = theirs.create()
        assert mine.get(token) == TOKEN_PRINCIPAL
        theirs.revoke(sid)  # logout through the other process
        assert mine.get(sid) is None
        stored = {r["id_hash"] for r in one.query("SELECT id_hash FROM login_sessions")}
        assert stored == {hashlib.sha256(token.encode()).hexdigest()} and token not in stored


def test_an_unbound_session_table_is_a_programming_error() -> None:
    with pytest.raises(RuntimeError, match="before the database was opened"):
        SessionStore().create()

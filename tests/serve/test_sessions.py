"""leukoscope.serve.sessions: random session ids that expire and can be revoked, with a fake clock."""

from __future__ import annotations

from leukoscope.serve.sessions import SessionStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_works_until_it_expires() -> None:
    clock = Clock()
    sessions = SessionStore(3600, clock=clock)
    sid = sessions.create()
    assert len(sid) >= 40 and sessions.is_valid(sid)
    clock.now += 3599
    assert sessions.is_valid(sid)
    clock.now += 1
    assert not sessions.is_valid(sid) and len(sessions) == 0  # expired ids are forgotten


def test_revoked_and_unknown_ids_are_refused() -> None:
    sessions = SessionStore(3600, clock=Clock())
    first, second = sessions.create(), sessions.create()
    assert first != second
    sessions.revoke(first)
    assert not sessions.is_valid(first) and sessions.is_valid(second)
    assert not sessions.is_valid("made-up") and not sessions.is_valid("") and not sessions.is_valid(None)
    sessions.revoke(None)  # logging out without a session is harmless


def test_memory_stays_bounded() -> None:
    sessions = SessionStore(3600, clock=Clock(), max_sessions=2)
    ids = [sessions.create() for _ in range(3)]
    assert len(sessions) == 2 and not sessions.is_valid(ids[0]) and sessions.is_valid(ids[2])

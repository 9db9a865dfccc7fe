"""Fixtures of the CLI tests that manage the web app's users."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher

from leukoscope.serve import users as users_module


@pytest.fixture
def fast_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cheap argon2 parameters: the tests check who may log in, not the hash's cost."""
    monkeypatch.setattr(users_module, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    monkeypatch.setattr(users_module, "_dummy_hash", None)

"""Named users (leukoscope.serve.users): argon2id hashes, the password rules, names, authentication, and what
the auth middleware asks (Accounts); sessions carry who logged in; password guesses are locked out."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from sqlalchemy import text

from leukoscope.errors import DataError, UsageError
from leukoscope.serve import users as users_module
from leukoscope.serve.lockout import Lockout, password_key, password_message
from leukoscope.serve.sessions import TOKEN_PRINCIPAL, Principal, SessionStore
from leukoscope.serve.store import Store
from leukoscope.serve.users import Accounts, Users, password_problem, users_exist

GOOD = "correct horse battery"


@pytest.fixture
def store(any_store: Store) -> Store:
    """On SQLite and PostgreSQL."""
    return any_store


def test_passwords_are_stored_as_argon2id_hashes_with_the_library_defaults(store: Store, monkeypatch):
    monkeypatch.setattr(users_module, "_hasher", PasswordHasher())  # the real parameters, once
    Users(store).add("alice", "technologist", GOOD)
    stored = store.scalar("SELECT password_hash FROM users")
    assert stored.startswith("$argon2id$") and GOOD not in stored
    defaults = PasswordHasher()
    assert f"m={defaults.memory_cost},t={defaults.time_cost},p={defaults.parallelism}" in stored
    user, principal = Users(store).authenticate("alice", GOOD)
    assert user is not None and principal == Principal("alice", "technologist", "password", principal.stamp)


@pytest.mark.parametrize("password, problem", [
    ("", "empty password"), ("short", "too short"), ("aaaaaaaaaaaaaa", "too simple"), ("Password123", "too common"),
    ("alice-is-great", "contains the user name"), (" padded password ", "starts or ends with a space"),
    ("x" * 2000, "too long"),
])
def test_weak_passwords_are_refused(password: str, problem: str):
    assert problem in password_problem("alice", password)
    assert password_problem("alice", GOOD) is None


def test_adding_users_refuses_bad_names_roles_duplicates_and_weak_passwords(store: Store):
    users = Users(store)
    alice = users.add("alice", "technologist", GOOD)
    assert (alice.name, alice.role, alice.disabled) == ("alice", "technologist", False)
    with pytest.raises(DataError, match="a user named 'alice' already exists"):
        users.add("Alice", "admin", GOOD)  # names compare without case
    for name in ("", "../x", "a b", "x" * 65, "-dash", "api-token", "API-Token"):
        with pytest.raises(UsageError):
            users.add(name, "technologist", GOOD)
    with pytest.raises(UsageError, match="unknown role 'boss'"):
        users.add("bob", "boss", GOOD)
    with pytest.raises(UsageError, match="too short"):
        users.add("bob", "technologist", "short")
    assert [u.name for u in users.all_users()] == ["alice"] and users.count() == 1  # nothing else was written


def test_authentication_right_wrong_unknown_and_disabled(store: Store):
    users = Users(store)
    users.add("alice", "admin", GOOD)
    user, principal = users.authenticate("ALICE", GOOD)  # the name without case; the password exactly
    assert user.name == "alice" and principal.is_admin and principal.name == "alice"
    assert users.authenticate("alice", GOOD.upper()) == (None, None)
    assert users.authenticate("nobody", GOOD) == (None, None)
    assert users.authenticate("../etc", GOOD) == (None, None)
    assert users.authenticate("alice", "x" * 5000) == (None, None)
    users.set_disabled("alice", True)
    user, principal = users.authenticate("alice", GOOD)
    assert user.disabled and principal is None  # the right password of a disabled user: no session
    assert users.set_disabled("alice", False).disabled is False
    with pytest.raises(DataError, match="no user named 'bob'"):
        users.set_disabled("bob", True)


def test_a_hash_made_with_older_parameters_is_upgraded_at_login(store: Store, monkeypatch):
    monkeypatch.setattr(users_module, "_hasher", PasswordHasher(time_cost=1, memory_cost=512, parallelism=1))
    Users(store).add("alice", "technologist", GOOD)
    monkeypatch.setattr(users_module, "_hasher", PasswordHasher(time_cost=2, memory_cost=1024, parallelism=1))
    assert Users(store).authenticate("alice", GOOD)[1] is not None
    stored = store.scalar("SELECT password_hash FROM users")
    assert "m=1024,t=2,p=1" in stored


def test_accounts_say_whether_users_exist_and_whether_a_session_still_holds(store: Store):
    accounts = Accounts(store)
    assert not accounts.any_users() and not Accounts().any_users()
    users = Users(store)
    users.add("alice", "technologist", GOOD)
    assert accounts.any_users() and users_exist(store.path or store.url.render_as_string(hide_password=False))
    _, session = users.authenticate("alice", GOOD)
    assert accounts.current(session) == session
    store.write(lambda conn: conn.execute(text("UPDATE users SET role = 'admin'")))
    assert accounts.current(session).is_admin  # the role as it is now
    users.set_password("alice", "another fine password")
    assert accounts.current(session) is None  # a new password ends the old sessions
    _, session = users.authenticate("alice", "another fine password")
    users.set_disabled("alice", True)
    assert accounts.current(session) is None
    assert accounts.current(Principal("ghost", "admin", "password", "x")) is None


def test_users_exist_reads_without_creating_or_migrating(tmp_path: Path):
    missing = tmp_path / "none.db"
    assert not users_exist(missing) and not missing.exists()
    old = tmp_path / "old.db"
    sqlite3.connect(old).execute("CREATE TABLE predictions (id INTEGER)").connection.close()
    assert not users_exist(old)  # a database from before users
    assert sqlite3.connect(old).execute("PRAGMA user_version").fetchone()[0] == 0


def test_sessions_carry_their_principal_and_a_users_sessions_can_be_ended(store: Store):
    sessions = SessionStore(3600, store=store)
    alice = Principal("alice", "technologist", "password", "s1")
    mine, other, token = sessions.create(alice), sessions.create(Principal("bob", "admin")), sessions.create()
    assert sessions.get(mine) == alice and sessions.get(token) == TOKEN_PRINCIPAL and TOKEN_PRINCIPAL.is_admin
    assert sessions.revoke_user("alice") == 1
    assert sessions.get(mine) is None and sessions.is_valid(other) and sessions.is_valid(token)


def test_password_guesses_are_counted_per_name_and_address(store: Store):
    lockout = Lockout(limit=3, window_s=60, clock=lambda: 1000.0, store=store)
    key = password_key("10.0.0.5", "Alice")
    assert key == password_key("10.0.0.5", "alice") != password_key("10.0.0.6", "alice")
    for _ in range(3):
        lockout.failed(key)
    assert lockout.retry_after(key) == 60
    assert lockout.retry_after(password_key("10.0.0.5", "bob")) == 0  # a colleague behind the same proxy
    assert lockout.retry_after("10.0.0.5") == 0  # and the address's token guesses are a separate count
    assert password_message(60) == "too many wrong passwords for this name from this address: try again in 60 s"

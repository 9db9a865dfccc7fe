"""`leukoscope users`: add (prompted twice or from a file), list, disable, enable, set-password; one line and exit
code 2 for a weak password or a bad name or role, 1 for a taken name or an unknown user; --db like `serve`."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
import typer

from leukoscope.serve.store import Store
from leukoscope.serve.users import Users
from tests.helpers.cli import run

GOOD = "correct horse battery"
pytestmark = pytest.mark.usefixtures("wide_console", "fast_hashing")


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("LEUKOSCOPE_DB", raising=False)
    return tmp_path / "data" / "leukoscope.db"


@pytest.fixture
def typed(monkeypatch: pytest.MonkeyPatch):
    """typed(first, second): what the user types at the two password prompts."""
    def answers(*values: str) -> list[str]:
        queue = list(values)
        asked: list[str] = []

        def prompt(text: str, **options: object) -> str:
            assert options.get("hide_input") is True  # never echoed
            asked.append(text)
            return queue.pop(0)

        monkeypatch.setattr(typer, "prompt", prompt)
        return asked

    return answers


def authenticate(db: Path, name: str, password: str):
    with Store(db) as store:
        return Users(store).authenticate(name, password)[1]


def test_add_prompts_twice_and_the_user_can_log_in(capsys, db, typed):
    asked = typed(GOOD, GOOD)
    code, out, err = run(capsys, "users", "add", "alice", "--role", "technologist", "--db", db)
    assert code == 0 and not err and out.strip() == f"added technologist alice to {db}"
    assert asked == ["Password", "Password again"]
    principal = authenticate(db, "alice", GOOD)
    assert principal is not None and principal.role == "technologist"
    code, out, _ = run(capsys, "users", "list", "--db", db)
    assert code == 0 and out.split()[:2] == ["alice", "technologist"] and out.split()[-1] == "enabled"


@pytest.mark.parametrize("first, second, message", [
    ("", "", "error: empty password: choose another"),
    ("short", "short", "error: password too short (5 characters; at least 10)"),
    ("aaaaaaaaaaaa", "aaaaaaaaaaaa", "error: password too simple"),
    (GOOD, GOOD + "!", "error: the two passwords differ: nothing was changed"),
])
def test_weak_empty_or_mistyped_passwords_are_one_line_and_exit_2(capsys, db, typed, first, second, message):
    typed(first, second)
    code, out, err = run(capsys, "users", "add", "alice", "--db", db)
    assert code == 2 and not out and err.startswith(message) and err.count("\n") == 1
    assert not db.exists()  # refused before any database was made


def test_a_taken_name_is_exit_1_and_bad_names_or_roles_exit_2(capsys, db, tmp_path):
    password_file = tmp_path / "pw.txt"
    password_file.write_text(GOOD + "\n")
    assert run(capsys, "users", "add", "alice", "--password-file", password_file, "--db", db)[0] == 0
    code, _, err = run(capsys, "users", "add", "ALICE", "--password-file", password_file, "--db", db)
    assert code == 1 and err == "error: a user named 'alice' already exists\n"
    code, _, err = run(capsys, "users", "add", "bob", "--role", "boss", "--password-file", password_file, "--db", db)
    assert code == 2 and err == "error: unknown role 'boss': choose technologist, admin or network-admin\n"
    for name in ("api-token", "../bob", "bob smith"):
        code, _, err = run(capsys, "users", "add", name, "--password-file", password_file, "--db", db)
        assert code == 2 and err.count("\n") == 1, name
    code, _, err = run(capsys, "users", "add", "bob", "--password-file", tmp_path / "missing.txt", "--db", db)
    assert code == 2 and err.startswith("error: cannot read the password file")
    with Store(db) as store:
        assert [u.name for u in Users(store).all_users()] == ["alice"]


def test_password_from_standard_input_and_the_database_from_the_environment(capsys, db, monkeypatch):
    monkeypatch.setenv("LEUKOSCOPE_DB", str(db))
    monkeypatch.setattr(sys, "stdin", io.StringIO(GOOD + "\nignored second line\n"))
    code, out, _ = run(capsys, "users", "add", "root", "--role", "admin", "--password-file", "-")
    assert code == 0 and "added admin root" in out
    assert authenticate(db, "root", GOOD).is_admin


def test_disable_enable_and_set_password(capsys, db, tmp_path, typed):
    password_file = tmp_path / "pw.txt"
    password_file.write_text(GOOD)
    run(capsys, "users", "add", "alice", "--password-file", password_file, "--db", db)
    code, out, _ = run(capsys, "users", "disable", "alice", "--db", db)
    assert code == 0 and out.startswith("disabled alice") and authenticate(db, "alice", GOOD) is None
    assert run(capsys, "users", "list", "--db", db)[1].split()[-1] == "disabled"
    assert run(capsys, "users", "enable", "alice", "--db", db)[0] == 0 and authenticate(db, "alice", GOOD)
    typed("a whole new secret", "a whole new secret")
    code, out, _ = run(capsys, "users", "set-password", "alice", "--db", db)
    assert code == 0 and out.strip() == "new password set for alice"
    assert authenticate(db, "alice", GOOD) is None and authenticate(db, "alice", "a whole new secret")
    for command in ("disable", "enable", "set-password"):
        code, _, err = run(capsys, "users", command, "nobody", "--db", db, "--password-file", password_file) \
            if command == "set-password" else run(capsys, "users", command, "nobody", "--db", db)
        assert code == 1 and err == "error: no user named 'nobody'\n", command


def test_list_without_a_database_says_so_and_makes_none(capsys, db):
    code, out, err = run(capsys, "users", "list", "--db", db)
    assert code == 1 and not out and err.startswith(f"error: no database at {db}")
    assert not db.exists()


def test_users_is_a_registered_command(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "users" in out

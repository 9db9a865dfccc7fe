"""`leukoscope clinics` and `leukoscope tokens`, and `users add --clinic`: one line and exit 2 for an unknown
clinic or role or a bad name, 1 for a taken name or an unreachable database; a token is printed once and
stored hashed; a removed clinic's token stops working; without `--clinic` everything is the implicit clinic."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from leukoscope.serve.store import Store
from leukoscope.serve.tokens import ApiTokens
from leukoscope.serve.users import Users
from tests.helpers.cli import run
from tests.helpers.modelfixtures import shared_tiny_package

GOOD = "correct horse battery"
UNREACHABLE = "postgresql://leuko:pw@127.0.0.1:1/leukoscope"
pytestmark = pytest.mark.usefixtures("wide_console", "fast_hashing")


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("LEUKOSCOPE_DB", raising=False)
    monkeypatch.delenv("LEUKOSCOPE_DB_URL", raising=False)
    return tmp_path / "data" / "leukoscope.db"


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "pw.txt"
    path.write_text(GOOD + "\n")
    return path


def test_clinics_add_list_set_model_remove(capsys, db, tmp_path, tmp_path_factory):
    assert run(capsys, "clinics", "add", "north", "--db", db)[0] == 0
    code, _, err = run(capsys, "clinics", "add", "NORTH", "--db", db)
    assert code == 1 and err == "error: a clinic named 'north' already exists\n"
    code, _, err = run(capsys, "clinics", "add", "no rth", "--db", db)
    assert code == 2 and err.startswith("error: invalid clinic name") and err.count("\n") == 1
    package = tmp_path / "adapted"
    package.mkdir()
    code, _, err = run(capsys, "clinics", "set-model", "north", package, "--db", db)
    assert code == 2 and "not a model package" in err and err.count("\n") == 1
    (package / "model.json").write_text("{}")  # a damaged package is refused now, not at each prediction
    code, _, err = run(capsys, "clinics", "set-model", "north", package, "--db", db)
    assert code == 1 and "is not a leukoscope model description" in err and err.count("\n") == 1
    shutil.rmtree(package)
    shutil.copytree(shared_tiny_package(tmp_path_factory), package)
    (package / "model.onnx").write_bytes(b"garbage")
    code, _, err = run(capsys, "clinics", "set-model", "north", package, "--db", db)
    assert code == 1 and "model.onnx does not match its sha256" in err and err.count("\n") == 1
    shutil.rmtree(package)
    shutil.copytree(shared_tiny_package(tmp_path_factory), package)
    code, out, _ = run(capsys, "clinics", "set-model", "north", package, "--db", db)
    assert code == 0 and str(package.resolve()) in out
    code, _, err = run(capsys, "clinics", "set-model", "south", package, "--db", db)
    assert code == 2 and err.startswith("error: unknown clinic 'south'") and err.count("\n") == 1
    code, out, _ = run(capsys, "clinics", "list", "--db", db)
    lines = out.splitlines()
    assert code == 0 and [line.split()[0] for line in lines] == ["default", "north"]
    assert lines[1].split()[-1] == str(package.resolve())
    assert run(capsys, "clinics", "remove", "north", "--db", db)[0] == 0
    assert [line.split()[0] for line in run(capsys, "clinics", "list", "--db", db)[1].splitlines()] == ["default"]
    code, _, err = run(capsys, "clinics", "remove", "default", "--db", db)
    assert code == 2 and "cannot be removed" in err


def test_users_add_with_a_clinic_and_role_and_bad_ones(capsys, db, password_file):
    run(capsys, "clinics", "add", "north", "--db", db)
    code, out, _ = run(capsys, "users", "add", "nadia", "--clinic", "north", "--role", "admin", "--password-file",
                       password_file, "--db", db)
    assert code == 0 and out.strip() == f"added admin nadia of clinic north to {db}"
    code, _, err = run(capsys, "users", "add", "bob", "--clinic", "nowhere", "--password-file", password_file,
                       "--db", db)
    assert code == 2 and err.startswith("error: unknown clinic 'nowhere'") and err.count("\n") == 1
    code, _, err = run(capsys, "users", "add", "bob", "--role", "chief", "--password-file", password_file, "--db", db)
    assert code == 2 and err.startswith("error: unknown role 'chief'") and err.count("\n") == 1
    code, _, err = run(capsys, "users", "add", "NADIA", "--password-file", password_file, "--db", db)
    assert code == 1 and err == "error: a user named 'nadia' already exists\n"
    assert run(capsys, "users", "add", "net", "--role", "network-admin", "--password-file", password_file,
               "--db", db)[0] == 0
    with Store(db) as store:
        users = {u.name: u for u in Users(store).all_users()}
    assert (users["nadia"].clinic, users["net"].clinic, users["net"].role) == ("north", "default", "network-admin")
    code, out, _ = run(capsys, "users", "list", "--clinic", "north", "--db", db)
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == ["nadia"]


def test_tokens_are_shown_once_stored_hashed_and_revoked(capsys, db):
    run(capsys, "clinics", "add", "north", "--db", db)
    code, out, _ = run(capsys, "tokens", "create", "--clinic", "north", "--name", "lims", "--db", db)
    secret = out.splitlines()[0]
    assert code == 0 and secret.startswith("lks_") and "shown only now" in out
    with Store(db) as store:
        stored = store.query("SELECT token_hash FROM api_tokens")
        assert [r["token_hash"] for r in stored] == [hashlib.sha256(secret.encode()).hexdigest()]
        assert ApiTokens(store).principal(secret).name == "token:lims"
    code, out, _ = run(capsys, "tokens", "list", "--db", db)
    assert code == 0 and secret not in out and out.split()[1:3] == ["lims", "north"] and out.split()[-1] == "active"
    code, _, err = run(capsys, "tokens", "create", "--clinic", "nowhere", "--db", db)
    assert code == 2 and err.startswith("error: unknown clinic 'nowhere'")
    code, _, err = run(capsys, "tokens", "create", "--clinic", "north", "--role", "boss", "--db", db)
    assert code == 2 and err.startswith("error: unknown role 'boss'")
    assert run(capsys, "tokens", "revoke", "lims", "--db", db)[0] == 0
    code, _, err = run(capsys, "tokens", "revoke", "nothing", "--db", db)
    assert code == 1 and err.startswith("error: no token with id or name 'nothing'")
    with Store(db) as store:
        assert ApiTokens(store).principal(secret) is None


def test_a_removed_clinics_token_stops_working(capsys, db):
    run(capsys, "clinics", "add", "south", "--db", db)
    secret = run(capsys, "tokens", "create", "--clinic", "south", "--db", db)[1].splitlines()[0]
    with Store(db) as store:
        assert ApiTokens(store).principal(secret) is not None
    run(capsys, "clinics", "remove", "south", "--db", db)
    with Store(db) as store:
        assert ApiTokens(store).principal(secret) is None


@pytest.mark.parametrize("command", [["clinics", "list"], ["tokens", "list"], ["clinics", "add", "x"]])
def test_an_unreachable_database_is_one_line_and_exit_1(capsys, command):
    code, out, err = run(capsys, *command, "--db", UNREACHABLE)
    assert code == 1 and not out and err.startswith("error: cannot reach the database") and err.count("\n") == 1

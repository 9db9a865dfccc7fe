"""`leukoscope users`: the web app's named users (technologists verify calls, admins manage users).

Users live in the server's database (`--db`, as for `serve`: a SQLite file or a postgresql:// URL), so a lab
adds them before or while the server runs; passwords are typed twice at a prompt (never on the command line,
where `ps` and the shell history would keep them) or read from the first line of `--password-file` ('-' for standard input).
Each user belongs to one clinic (`--clinic`, the implicit one by default, so a single workstation never names
one); a network admin (`--role network-admin`) sees every clinic.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from leukoscope.cli.common import console
from leukoscope.errors import DataError, UsageError

users_app = typer.Typer(help="Named users of the web app: add, list, disable, enable, set a password.",
                        no_args_is_help=True)

DB_HELP = ("The web app's database: a SQLite file, or postgresql://USER[:PASSWORD]@HOST[:PORT]/NAME (default: "
           "$LEUKOSCOPE_DB_URL, else $LEUKOSCOPE_DB, else ./leukoscope-data/leukoscope.db).")


def _database(db: str | None) -> str | Path:
    from leukoscope.serve.settings import database_from_env

    return database_from_env(db)


def _users(db: str | None, *, create: bool = False):  # -> (Store, Users)
    from leukoscope.serve.store import Store
    from leukoscope.serve.users import Users

    target = _database(db)
    if not create and isinstance(target, Path) and not target.exists():
        raise DataError(f"no database at {target}: add a user first, or pass the server's --db")
    store = Store(target).open()
    return store, Users(store)


@contextmanager
def open_store(db: str | None, *, create: bool = False) -> Iterator:  # yields an open Store
    """The web app's database, open (and migrated), closed afterwards (`clinics`, `tokens` use it too)."""
    store, _ = _users(db, create=create)
    try:
        yield store
    finally:
        store.close()


def _read_password(password_file: Path | None) -> str:
    """The first line of the file ('-': standard input) without its line ending, or two matching prompts."""
    if password_file is not None:
        try:
            text = sys.stdin.readline() if str(password_file) == "-" else password_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise UsageError(f"cannot read the password file {password_file}: {reason}") from None
        return text.splitlines()[0] if text.splitlines() else ""
    first = typer.prompt("Password", default="", show_default=False, hide_input=True)
    second = typer.prompt("Password again", default="", show_default=False, hide_input=True)
    if first != second:
        raise UsageError("the two passwords differ: nothing was changed")
    return first


def add(
    name: str = typer.Argument(..., help="User name (letters, digits, '.', '_', '-')."),
    role: str = typer.Option("technologist", "--role", help="technologist (predicts, verifies), admin (also "
                             "manages the clinic's users) or network-admin (every clinic)."),
    clinic: str | None = typer.Option(None, "--clinic", help="The user's clinic (default: the implicit one; "
                                      "`leukoscope clinics add` makes others)."),
    password_file: Path | None = typer.Option(None, "--password-file", help="Read the password from the first "
                                              "line of this file ('-': standard input) instead of prompting."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Add a user. Refuses a taken name (exit 1) and a weak or empty password (exit 2)."""
    from leukoscope.serve.clinics import Clinics, check_clinic_name
    from leukoscope.serve.users import check_name, check_password, check_role

    check_name(name)
    check_role(role)
    if clinic is not None:
        check_clinic_name(clinic)
    password = check_password(name, _read_password(password_file))  # before a database is created
    store, users = _users(db, create=True)
    try:
        home = Clinics(store).require(clinic)  # an unknown clinic: exit 2, nothing written
        user = users.add(name, role, password, home.id)
    finally:
        store.close()
    where = f" of clinic {user.clinic}" if clinic is not None else ""
    console.print(f"added {user.role} {user.name}{where} to {store.where}", highlight=False, soft_wrap=True)


def list_users(clinic: str | None = typer.Option(None, "--clinic", help="Only this clinic's users."),
               db: str | None = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """List the users: name, role, since when, enabled or disabled, clinic."""
    from leukoscope.serve.clinics import Clinics

    store, users = _users(db)
    try:
        everyone = users.all_users(Clinics(store).require(clinic).id if clinic is not None else None)
    finally:
        store.close()
    if not everyone:
        console.print("no users (leukoscope users add NAME --role technologist)", highlight=False)
        return
    width = max(len(u.name) for u in everyone)
    for u in everyone:
        state = "disabled" if u.disabled else "enabled"
        console.print(f"{u.name:<{width}}  {u.role:<13}  {u.created_at}  {u.clinic}  {state}", highlight=False,
                      soft_wrap=True, markup=False)


def _set_disabled(name: str, db: str | None, disabled: bool) -> None:
    store, users = _users(db)
    try:
        user = users.set_disabled(name, disabled)
    finally:
        store.close()
    said = "disabled" if disabled else "enabled"
    note = " (their sessions end at their next request; their verifications stay)" if disabled else ""
    console.print(f"{said} {user.name}{note}", highlight=False, soft_wrap=True)


def disable(name: str = typer.Argument(..., help="User name."),
            db: str | None = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Disable a user: they can no longer log in. Users are never deleted (the verification trail names them)."""
    _set_disabled(name, db, True)


def enable(name: str = typer.Argument(..., help="User name."),
           db: str | None = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Enable a disabled user again."""
    _set_disabled(name, db, False)


def set_password(
    name: str = typer.Argument(..., help="User name."),
    password_file: Path | None = typer.Option(None, "--password-file", help="Read the password from the first "
                                              "line of this file ('-': standard input) instead of prompting."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Give a user a new password (their current sessions end)."""
    store, users = _users(db)
    try:
        if users.get(name) is None:
            raise DataError(f"no user named {name!r}")
        user = users.set_password(name, _read_password(password_file))
    finally:
        store.close()
    console.print(f"new password set for {user.name}", highlight=False, soft_wrap=True)


users_app.command("add")(add)
users_app.command("list")(list_users)
users_app.command("disable")(disable)
users_app.command("enable")(enable)
users_app.command("set-password")(set_password)


def register(app: typer.Typer) -> None:
    """Add `users` to the leukoscope app."""
    app.add_typer(users_app, name="users")

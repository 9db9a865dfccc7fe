"""Named users: technologists verify the model's calls, admins manage users.

Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106's low-memory profile) and checked with
the hash's own parameters, so hashes made with older settings keep working and are upgraded at the next
login. A name that does not exist is checked against a dummy hash, so the time an answer takes does not say
which names exist. Users are never deleted (the verification trail names them): an admin disables them.

`Users` is the table's API (the `leukoscope users` command and the login form use it); `Accounts` is what
the auth middleware asks on every request: whether any user exists (then the whole app needs a login) and
whether a logged-in user is still enabled, with the role and password they have now.

Every user belongs to one clinic (the implicit one unless `users add --clinic`); names are unique across the
network (the verification trail names users). A removed clinic's users can no longer log in, and their
sessions end at their next request. `network-admin` users see every clinic.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from leukoscope.errors import DataError, UsageError
from leukoscope.serve.database import database_url, display, make_engine, reason, sqlite_path
from leukoscope.serve.sessions import ROLES, TOKEN_USER, Principal
from leukoscope.serve.store import DEFAULT_CLINIC_ID, Store, utc_now

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_NAME_RE = re.compile(NAME_PATTERN)
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024  # argon2 takes any length; a bound keeps a login request cheap to refuse
# A few of the most used passwords at or above the minimum length (lower case, compared case-insensitively).
COMMON_PASSWORDS = frozenset({
    "1234567890", "0123456789", "12345678910", "1234567890a", "qwertyuiop", "password12", "password123",
    "password1234", "passw0rd123", "iloveyou12", "qwerty1234", "qwerty12345", "abcdefghij", "letmein123",
    "welcome123", "admin12345", "administrator", "1q2w3e4r5t", "1qaz2wsx3edc", "zaq12wsxcde", "changeme123",
    "leukoscope", "leukoscope1", "leukoscope123", "technologist", "laboratory", "laboratory1",
})
# names compare without case (ASCII only, as names are; the unique index users_name_nocase says the same)
SAME_NAME = "lower(name) = lower(:name)"
_hasher = PasswordHasher()
_dummy_hash: str | None = None


@dataclass(frozen=True)
class User:
    """One user, without the password hash."""

    id: int
    name: str
    role: str
    created_at: str
    disabled: bool
    clinic_id: int = DEFAULT_CLINIC_ID
    clinic: str = "default"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "created_at": self.created_at, "disabled": self.disabled,
                "clinic": self.clinic}


def check_name(name: str) -> str:
    """A user name: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit."""
    if not _NAME_RE.match(name or ""):
        raise UsageError(f"invalid user name {name[:80]!r}: use 1-64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    if name.lower() == TOKEN_USER:
        raise UsageError(f"the user name {TOKEN_USER!r} is reserved (it names the API token's holder)")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise UsageError(f"unknown role {role[:40]!r}: choose {', '.join(ROLES[:-1])} or {ROLES[-1]}")
    return role


def password_problem(name: str, password: str) -> str | None:
    """Why `password` is too weak for user `name`, or None."""
    if not password:
        return "empty password"
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"password too short ({len(password)} characters; at least {MIN_PASSWORD_LENGTH})"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"password too long (at most {MAX_PASSWORD_LENGTH} characters)"
    if password.strip() != password:
        return "password starts or ends with a space"
    if len(set(password)) < 4:
        return "password too simple (fewer than 4 different characters)"
    lowered = password.lower()
    if lowered in COMMON_PASSWORDS:
        return "password too common"
    if name and name.lower() in lowered:
        return "password contains the user name"
    return None


def check_password(name: str, password: str) -> str:
    """`password` when strong enough for user `name`; UsageError (one line) otherwise."""
    if problem := password_problem(name, password):
        raise UsageError(f"{problem}: choose another (at least {MIN_PASSWORD_LENGTH} characters, not a common one)")
    return password


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def stamp(password_hash: str) -> str:
    """A fingerprint of a password hash, kept in a session: a new password ends the sessions of the old one."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def _matches(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _dummy() -> str:
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = hash_password("no user has this password")
    return _dummy_hash


def _user(row: Mapping[str, Any]) -> User:
    return User(id=row["id"], name=row["name"], role=row["role"], created_at=row["created_at"],
                disabled=bool(row["disabled"]), clinic_id=int(row["clinic_id"]), clinic=row["clinic"])


# users with their clinic's name and whether it was removed (a removed clinic's users cannot log in)
_USERS = ("SELECT users.*, clinics.name AS clinic, clinics.deleted_at AS clinic_deleted FROM users "
          "JOIN clinics ON clinics.id = users.clinic_id")
_SAME_USER = "lower(users.name) = lower(:name)"


class Users:
    """The users table of one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _row(self, name: str) -> Mapping[str, Any] | None:
        rows = self.store.query(f"{_USERS} WHERE {_SAME_USER}", {"name": name})
        return rows[0] if rows else None

    def get(self, name: str, clinic: int | None = None) -> User | None:
        """The user called `name` (names compare without case) in `clinic` (None: any clinic), or None."""
        row = self._row(name)
        if row is None or (clinic is not None and int(row["clinic_id"]) != clinic):
            return None
        return _user(row)

    def all_users(self, clinic: int | None = None) -> list[User]:
        """Every user of `clinic` (None: of every clinic)."""
        where, params = (" WHERE users.clinic_id = :clinic", {"clinic": clinic}) if clinic is not None else ("", {})
        return [_user(r) for r in self.store.query(f"{_USERS}{where} ORDER BY lower(users.name), users.name",
                                                   params)]

    def count(self) -> int:
        return int(self.store.scalar("SELECT COUNT(*) FROM users"))

    def add(self, name: str, role: str, password: str, clinic_id: int = DEFAULT_CLINIC_ID) -> User:
        """Create a user in a clinic (the implicit one by default). UsageError for a bad name, role or a weak
        password; DataError when the name is taken (in any clinic: names are unique across the network)."""
        check_name(name)
        check_role(role)
        password_hash = hash_password(check_password(name, password))
        now = utc_now()

        def work(conn: Connection) -> User:
            taken = conn.execute(text(f"SELECT name FROM users WHERE {SAME_NAME}"), {"name": name}).scalar()
            if taken is not None:
                raise DataError(f"a user named {taken!r} already exists")
            clinic = conn.execute(text("SELECT name FROM clinics WHERE id = :id AND deleted_at IS NULL"),
                                  {"id": clinic_id}).scalar()
            if clinic is None:
                raise UsageError(f"unknown clinic (id {clinic_id})")
            new_id = conn.execute(text("INSERT INTO users (name, role, password_hash, created_at, clinic_id) "
                                       "VALUES (:name, :role, :hash, :now, :clinic) RETURNING id"),
                                  {"name": name, "role": role, "hash": password_hash, "now": now,
                                   "clinic": clinic_id}).scalar_one()
            return User(int(new_id), name, role, now, False, clinic_id, clinic)

        try:
            return self.store.write(work)
        except IntegrityError:  # another process added the name between the check and the insert
            raise DataError(f"a user named {name!r} already exists") from None

    def set_disabled(self, name: str, disabled: bool) -> User:
        """Disable (their sessions end at their next request) or enable a user; DataError when unknown."""
        def work(conn: Connection) -> User:
            conn.execute(text(f"UPDATE users SET disabled = :disabled WHERE {SAME_NAME}"),
                         {"disabled": int(disabled), "name": name})
            row = conn.execute(text(f"{_USERS} WHERE {_SAME_USER}"), {"name": name}).mappings().first()
            if row is None:
                raise DataError(f"no user named {name!r}")
            return _user(row)

        return self.store.write(work)

    def set_password(self, name: str, password: str) -> User:
        """A new password (their sessions end); UsageError when weak, DataError when the user is unknown."""
        user = self.get(name)
        if user is None:
            raise DataError(f"no user named {name!r}")
        password_hash = hash_password(check_password(user.name, password))
        self.store.write(lambda conn: conn.execute(text("UPDATE users SET password_hash = :hash WHERE id = :id"),
                                                   {"hash": password_hash, "id": user.id}))
        return user

    def authenticate(self, name: str, password: str) -> tuple[User | None, Principal | None]:
        """(user, principal) for a right password: principal None when the user is disabled. (None, None) for
        an unknown name or a wrong password, after the same work either way."""
        row = self._row(name) if _NAME_RE.match(name or "") else None
        if row is None or len(password) > MAX_PASSWORD_LENGTH:
            _matches(_dummy(), password[:MAX_PASSWORD_LENGTH])
            return None, None
        if not _matches(row["password_hash"], password):
            return None, None
        password_hash = row["password_hash"]
        if _hasher.check_needs_rehash(password_hash):  # made with older parameters: upgrade it now
            password_hash = hash_password(password)
            self.store.write(lambda conn: conn.execute(text("UPDATE users SET password_hash = :hash WHERE id = :id"),
                                                       {"hash": password_hash, "id": row["id"]}))
        user = _user(row)
        refused = user.disabled or row["clinic_deleted"] is not None
        return user, (None if refused else Principal(user.name, user.role, "password", stamp(password_hash),
                                                     user.clinic_id))


def users_exist(db: str | os.PathLike[str]) -> bool:
    """Whether the database at `db` has users, read without creating or migrating it (False when it does not
    exist yet or predates users): `leukoscope serve` asks before it opens the store. DataError (one line) when
    a database server cannot be reached."""
    url = database_url(db)
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        return False
    engine = make_engine(url, read_only=True)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("users"):
                return False
            tokens = " OR EXISTS (SELECT 1 FROM api_tokens)" if inspect(conn).has_table("api_tokens") else ""
            return bool(conn.execute(text(f"SELECT EXISTS (SELECT 1 FROM users){tokens}")).scalar())
    except SQLAlchemyError as exc:
        if path is not None:
            return False  # not a database: Store.open says so next, in its words
        raise DataError(f"cannot reach the database {display(url)}: {reason(exc)}") from None
    finally:
        engine.dispose()


class Accounts:
    """What the auth middleware asks the users table, bound to the store when the app starts."""

    def __init__(self, store: Store | None = None) -> None:
        self.store = store
        self._exist = False  # users are never deleted: once some exist, they always will

    def any_users(self) -> bool:
        """Whether any user or clinic API token exists (then every page and route needs a login, token or no
        token; tokens are never deleted either, only revoked)."""
        if not self._exist and self.store is not None:
            self._exist = bool(self.store.scalar("SELECT EXISTS (SELECT 1 FROM users) OR "
                                                 "EXISTS (SELECT 1 FROM api_tokens)"))
        return self._exist

    def current(self, session: Principal) -> Principal | None:
        """A password session's principal as the users table says now: None once the user is disabled or has
        a new password; the role as it is now."""
        if self.store is None:
            return None
        rows = self.store.query(f"{_USERS} WHERE users.name = :name", {"name": session.name})
        if not rows or rows[0]["disabled"] or rows[0]["clinic_deleted"] is not None or \
                stamp(rows[0]["password_hash"]) != session.stamp:
            return None
        return Principal(session.name, rows[0]["role"], "password", session.stamp, int(rows[0]["clinic_id"]))

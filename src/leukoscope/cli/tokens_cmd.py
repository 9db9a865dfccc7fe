"""`leukoscope tokens`: per-clinic API tokens for machine clients (a lab system, a script).

`create` prints the token once (only its SHA-256 is stored: it cannot be shown again); `list` shows ids,
labels, clinics and whether revoked; `revoke` ends one at once, in every server process. The shared
LEUKOSCOPE_API_TOKEN keeps working as before, in the implicit clinic.
"""

from __future__ import annotations

import typer
from rich.markup import escape

from leukoscope.cli.common import console
from leukoscope.cli.users_cmd import DB_HELP, open_store

tokens_app = typer.Typer(help="API tokens of a clinic: create (shown once), list, revoke.", no_args_is_help=True)


def create(clinic: str = typer.Option(..., "--clinic", help="The clinic the token acts in."),
           name: str | None = typer.Option(None, "--name", help="A label (letters, digits, '.', '_', '-'); named "
                                           "'token:LABEL' in the verification trail."),
           role: str = typer.Option("admin", "--role", help="admin (also manages the clinic's users) or "
                                    "technologist."),
           db: str | None = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Create a token of a clinic and print it once (store it in the client's secret store now)."""
    from leukoscope.errors import UsageError
    from leukoscope.serve.clinics import Clinics, check_clinic_name
    from leukoscope.serve.tokens import TOKEN_ROLES, ApiTokens
    from leukoscope.serve.users import check_name

    check_clinic_name(clinic)
    if name is not None:
        check_name(name)
    if role not in TOKEN_ROLES:
        raise UsageError(f"unknown role {role!r} for a token: choose {' or '.join(TOKEN_ROLES)}")
    with open_store(db) as store:
        record, secret = ApiTokens(store).create(Clinics(store).require(clinic), name, role)
    console.print(secret, highlight=False, soft_wrap=True, markup=False)
    console.print(f"token {escape(record.name)} (id {record.uid}, {record.role} of clinic {escape(record.clinic)}): "
                  "shown only now; send it as 'Authorization: Bearer <token>'", highlight=False, soft_wrap=True)


def list_tokens(clinic: str | None = typer.Option(None, "--clinic", help="Only this clinic's tokens."),
                db: str | None = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """List the tokens (never their secrets): id, label, clinic, role, since when, revoked or not."""
    from leukoscope.serve.clinics import Clinics
    from leukoscope.serve.tokens import ApiTokens

    with open_store(db) as store:
        chosen = Clinics(store).require(clinic) if clinic is not None else None
        tokens = ApiTokens(store).all_tokens(chosen)
    if not tokens:
        console.print("no tokens (leukoscope tokens create --clinic NAME)", highlight=False)
        return
    width = max(len(t.name) for t in tokens)
    for t in tokens:
        state = "revoked" if t.revoked_at else "active"
        console.print(f"{t.uid}  {t.name:<{width}}  {t.clinic}  {t.role:<12}  {t.created_at}  {state}",
                      highlight=False, soft_wrap=True, markup=False)


def revoke(token: str = typer.Argument(..., help="The token's id or label (as `tokens list` shows them)."),
           db: str | None = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Revoke a token: it answers 401 from the next request on, in every server process."""
    from leukoscope.serve.tokens import ApiTokens

    with open_store(db) as store:
        record = ApiTokens(store).revoke(token)
    console.print(f"revoked token {escape(record.name)} of clinic {escape(record.clinic)}", highlight=False,
                  soft_wrap=True)


tokens_app.command("create")(create)
tokens_app.command("list")(list_tokens)
tokens_app.command("revoke")(revoke)


def register(app: typer.Typer) -> None:
    """Add `tokens` to the leukoscope app."""
    app.add_typer(tokens_app, name="tokens")

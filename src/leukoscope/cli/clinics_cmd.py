"""`leukoscope clinics`: the clinics (tenants) of one server for a hospital network.

A single workstation needs none of this: everything lives in the one implicit clinic ("default"). A network
adds a clinic per site, then its users (`users add --clinic`) and machine tokens (`tokens create --clinic`);
each clinic sees only its own images, calls, verifications and exports, and may predict with its own
package (`set-model`, e.g. a folder made by `leukoscope adapt`). Clinics are never deleted, only removed
(their rows stay for the audit; their tokens answer 401 and their users can no longer log in).
"""

from __future__ import annotations

import typer
from rich.markup import escape

from leukoscope.cli.common import console
from leukoscope.cli.users_cmd import DB_HELP, open_store
from leukoscope.errors import UsageError

clinics_app = typer.Typer(help="Clinics of a hospital network's server: add, list, remove, set a model.",
                          no_args_is_help=True)


def add(name: str = typer.Argument(..., help="Clinic name (letters, digits, '.', '_', '-')."),
        db: str | None = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Add a clinic. Refuses a taken name (exit 1) and an invalid one (exit 2)."""
    from leukoscope.serve.clinics import Clinics, check_clinic_name

    check_clinic_name(name)
    with open_store(db, create=True) as store:
        clinic = Clinics(store).add(name)
    console.print(f"added clinic {escape(clinic.name)} to {escape(store.where)}", highlight=False, soft_wrap=True)


def list_clinics(all_: bool = typer.Option(False, "--all", help="Also list removed clinics."),
                 db: str | None = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """List the clinics: name, since when, the model they predict with, removed or not."""
    from leukoscope.serve.clinics import DEFAULT_CLINIC_MODEL, Clinics

    with open_store(db) as store:
        clinics = Clinics(store).all_clinics(include_deleted=all_)
    width = max(len(c.name) for c in clinics)
    for c in clinics:
        state = "removed" if c.deleted else "active"
        console.print(f"{c.name:<{width}}  {c.created_at}  {state:<7}  {c.model or DEFAULT_CLINIC_MODEL}",
                      highlight=False, soft_wrap=True, markup=False)


def remove(name: str = typer.Argument(..., help="Clinic name."),
           db: str | None = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Remove a clinic: its tokens stop working at once (401), its users can no longer log in; its rows stay."""
    from leukoscope.serve.clinics import Clinics

    with open_store(db) as store:
        clinic = Clinics(store).remove(name)
    console.print(f"removed clinic {escape(clinic.name)} (its tokens and logins stop working; its data stays)",
                  highlight=False, soft_wrap=True)


def set_model(name: str = typer.Argument(..., help="Clinic name."),
              package: str = typer.Argument(..., help="A model package folder (e.g. made by `leukoscope adapt`), "
                                            "or 'default' for the server's own."),
              db: str | None = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Choose the package a clinic predicts with; running servers use it within seconds (each loads it once)."""
    from leukoscope.inference.package import UNIT_CELLS, unit_of, verify_package
    from leukoscope.serve.clinics import DEFAULT_CLINIC_MODEL, Clinics, package_value

    value = package_value(package)  # a folder without a package: exit 2 before the database is opened
    # A damaged model.json or file is refused here, once, instead of failing the clinic's every prediction.
    if value is not None and unit_of(verify_package(value)) == UNIT_CELLS:
        raise UsageError(f"{package} is a cell model (it classifies cell crops): a clinic needs a field model")
    with open_store(db) as store:
        clinic = Clinics(store).set_model(name, package if value is None else value)
    console.print(f"clinic {escape(clinic.name)} predicts with {escape(clinic.model or DEFAULT_CLINIC_MODEL)}",
                  highlight=False, soft_wrap=True)


clinics_app.command("add")(add)
clinics_app.command("list")(list_clinics)
clinics_app.command("remove")(remove)
clinics_app.command("set-model")(set_model)


def register(app: typer.Typer) -> None:
    """Add `clinics` to the leukoscope app."""
    app.add_typer(clinics_app, name="clinics")

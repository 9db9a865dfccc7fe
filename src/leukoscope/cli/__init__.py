"""The `leukoscope` command line: thin Typer commands over the library, one module per command.

Every expected failure is a LeukoscopeError; `main` turns it into one red line on stderr and the error's
exit code (2 for usage errors, 1 otherwise), so users never see a traceback. Bad arguments are click's
own usage errors, shown as click shows them (exit code 2). An OSError that no command caught is a path the
file system refused (name too long, no such folder, read-only, disk full): one line naming it, exit code 1.
"""

from __future__ import annotations

import sys

import typer

try:  # Typer >= 0.2x runs on its own copy of click, whose exceptions are not click's
    from typer._click.exceptions import ClickException
except ImportError:  # older Typer runs on click itself
    from click import ClickException

from leukoscope.cli import common
from leukoscope.cli.data_cmd import data_app
from leukoscope.cli.info_cmd import info
from leukoscope.errors import LeukoscopeError
from leukoscope.runtime import tune_process

app = typer.Typer(
    name="leukoscope",
    help="ALL detection and B-cell subtyping in blood smear images. Research software, not a medical device.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data")
app.command("info")(info)


def _register_optional() -> None:
    """Commands living in their own modules; each module registers itself onto `app`."""
    import importlib

    for name in ("train_cmd", "evaluate_cmd", "predict_cmd", "export_cmd", "serve_cmd", "adapt_cmd", "users_cmd",
                 "segment_cmd", "clinics_cmd", "tokens_cmd"):
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            continue
        module.register(app)


_register_optional()


def _os_error_line(exc: OSError) -> str:
    """`PATH: reason` as the file system gave them, without Python's "[Errno N]" decoration."""
    reason = exc.strerror or str(exc)
    return f"{exc.filename}: {reason}" if exc.filename is not None else f"file system error: {reason}"


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (also `python -m leukoscope`); tunes the process before any command runs."""
    tune_process()  # glibc malloc settings, before torch allocates: `leukoscope train` as typed runs as under make
    try:
        code = app(args=argv, standalone_mode=False)
    except LeukoscopeError as exc:
        common.error(str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        common.error("interrupted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except ClickException as exc:  # bad arguments: usage line, hint and "Error: ..." as click writes them
        exc.show()
        sys.exit(exc.exit_code)
    except typer.Abort:  # click's answer to Ctrl-C / end of input inside a command
        common.error("aborted")
        sys.exit(130)
    except SystemExit:
        raise
    except MemoryError:  # e.g. a huge --batch-size or input size: what to change, not an "unexpected error"
        common.error("out of memory: lower --batch-size (or the input size) and try again")
        sys.exit(1)
    except OSError as exc:
        common.error(_os_error_line(exc))
        if common.debug_enabled():
            raise
        sys.exit(1)
    except Exception as exc:  # anything unexpected: one line, no traceback
        common.error(f"unexpected error: {type(exc).__name__}: {exc} (set LEUKOSCOPE_DEBUG=1 for a traceback)")
        if common.debug_enabled():
            raise
        sys.exit(1)
    if isinstance(code, int) and code:  # standalone_mode=False returns typer.Exit codes instead of raising
        sys.exit(code)

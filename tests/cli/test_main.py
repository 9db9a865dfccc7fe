"""`leukoscope.cli.main`: how each kind of failure reaches the user (one line or click's usage text, an exit code)."""

from __future__ import annotations

import pytest
import typer

import leukoscope.cli as cli
from leukoscope.errors import DataError
from tests.helpers.cli import run

pytestmark = pytest.mark.usefixtures("wide_console")


def test_bad_arguments_get_clicks_usage_text_and_exit_code_2(capsys) -> None:
    code, out, err = run(capsys, "predict")
    assert code == 2 and "Usage:" in err and "Error: Missing argument 'paths'." in err and not out
    code, _, err = run(capsys, "no-such-command")
    assert code == 2 and "No such command 'no-such-command'" in err


def test_every_command_is_registered(capsys) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("data", "info", "train", "evaluate", "predict", "export", "serve"):
        assert command in out


@pytest.fixture
def failing_app(monkeypatch: pytest.MonkeyPatch) -> typer.Typer:
    """A stand-in for the leukoscope app whose commands fail in each way a command can."""
    app = typer.Typer()

    @app.command("abort")
    def abort() -> None:
        raise typer.Abort()

    @app.command("exit")
    def exit_() -> None:
        raise typer.Exit(3)

    @app.command("data-error")
    def data_error() -> None:
        raise DataError("the folder has no images")

    @app.command("boom")
    def boom() -> None:
        raise RuntimeError("boom")

    @app.command("long-name")
    def long_name() -> None:
        raise OSError(36, "File name too long", "/tmp/" + "x" * 300)

    @app.command("no-memory")
    def no_memory() -> None:
        raise MemoryError()

    @app.command("two-lines")
    def two_lines() -> None:
        raise DataError("cannot read config c.yaml: while parsing a flow node\n  in line 2, column 1")

    monkeypatch.setattr(cli, "app", app)
    monkeypatch.delenv("LEUKOSCOPE_DEBUG", raising=False)
    return app


@pytest.mark.parametrize("command, expected_code, expected_err", [
    ("abort", 130, "error: aborted\n"),
    ("exit", 3, ""),
    ("data-error", 1, "error: the folder has no images\n"),
    ("boom", 1, "error: unexpected error: RuntimeError: boom (set LEUKOSCOPE_DEBUG=1 for a traceback)\n"),
    ("long-name", 1, f"error: /tmp/{'x' * 300}: File name too long\n"),  # a path the file system refused
    ("no-memory", 1, "error: out of memory: lower --batch-size (or the input size) and try again\n"),
    ("two-lines", 1, "error: cannot read config c.yaml: while parsing a flow node in line 2, column 1\n"),
])
def test_failures_are_one_line_and_an_exit_code(failing_app, capsys, command, expected_code, expected_err) -> None:
    code, out, err = run(capsys, command)
    assert (code, err, out) == (expected_code, expected_err, "")

"""`leukoscope serve`: option values click's ranges let through but uvicorn would fail on after start-up are
one line and exit code 2, before the database is made or the model loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.cli import one_error_line, run

pytestmark = pytest.mark.usefixtures("wide_console")


@pytest.mark.parametrize(("options", "message"), [
    (("--max-request-mb", "inf"), "error: --max-request-mb must be a finite number of MiB, got inf"),
    (("--max-file-mb", "inf"), "error: --max-file-mb must be a finite number of MiB, got inf"),
    (("--log-level", "loud"), "error: unknown --log-level 'loud'; choose from critical, error, warning, info"),
    (("--host", "not a host"), "error: --host 'not a host' is not an address to listen on"),
])
def test_options_uvicorn_would_fail_on_are_refused_first(capsys, tmp_path: Path, options, message) -> None:
    code, out, err = run(capsys, "serve", *options, "--db", tmp_path / "s.db", "--no-warmup")
    assert code == 2 and not out and one_error_line(err).startswith(message)
    assert not (tmp_path / "s.db").exists()

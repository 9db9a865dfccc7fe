"""Server settings: pydantic checks every value; a bad one is one UsageError line naming the setting and the
value (never the token), in the library and through `leukoscope serve` (exit code 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from leukoscope.errors import UsageError
from leukoscope.serve import Settings
from tests.helpers.cli import run

TOKEN = "a-token-of-24-characters"


@pytest.mark.parametrize("changes, message", [
    ({"workers": 0}, "workers must be at least 1 (got 0)"),
    ({"queue": -1}, "queue must be 0 or more (got -1)"),
    ({"port": 70000}, "port must be between 0 and 65535 (got 70000)"),
    ({"port": "http"}, "port must be a valid integer, unable to parse string as an integer (got 'http')"),
    ({"keep_images_days": 0}, "keep_images_days must be more than 0 (got 0)"),
    ({"session_hours": float("nan")}, "session_hours must be a finite number (got nan)"),
    ({"keep_images_days": 1e300}, "keep_images_days must be at most 36500 (got 1e+300)"),  # overflowed at start-up
    ({"max_file_bytes": 0}, "max_file_bytes must be at least 1 (got 0)"),
    ({"colour": "red"}, "unknown setting 'colour'"),
])
def test_a_bad_value_is_one_line_naming_the_setting_and_the_value(changes, message):
    with pytest.raises(UsageError) as caught:
        Settings(**changes)
    assert str(caught.value) == message


def test_every_bad_value_is_named_on_the_same_line():
    with pytest.raises(UsageError) as caught:
        Settings(workers=0, page_size=0)
    assert str(caught.value) == "workers must be at least 1 (got 0); page_size must be at least 1 (got 0)"


def test_the_token_is_never_repeated_in_an_error():
    with pytest.raises(UsageError) as caught:
        Settings(token="short-secret")
    assert "too short (12 characters" in str(caught.value) and "short-secret" not in str(caught.value)
    with pytest.raises(UsageError, match=r"^token must be a valid string$"):
        Settings(token=1234567890123456789)


def test_values_are_converted_to_their_types():
    settings = Settings(port="9000", db="~/leukoscope.db", model=Path("/models/pkg"),
                        allowed_hosts=[" lab.example ", "", "*.lab.example"], keep_images_days=30)
    assert settings.port == 9000 and settings.db == Path.home() / "leukoscope.db"
    assert settings.model == "/models/pkg" and settings.allowed_hosts == ("lab.example", "*.lab.example")
    assert settings.keep_images_days == 30.0 and settings.data_dir == Path.home()


def test_settings_are_frozen_and_copies_are_checked():
    settings = Settings(token=TOKEN)
    with pytest.raises(ValueError):
        settings.port = 1  # type: ignore[misc]
    assert settings.with_(port=1).port == 1 and settings.with_(port=1).token == TOKEN
    with pytest.raises(UsageError, match="workers must be at least 1"):
        settings.with_(workers=0)
    assert Settings() == Settings() and hash(Settings()) == hash(Settings())


def test_the_environment_fills_what_options_leave_out():
    env = {"LEUKOSCOPE_ALLOWED_HOSTS": "a.example, ,b.example", "LEUKOSCOPE_DB": "/tmp/x/y.db",
           "LEUKOSCOPE_API_TOKEN": TOKEN}
    settings = Settings.from_env(env, allowed_hosts=None, db=None)
    assert settings.allowed_hosts == ("a.example", "b.example") and settings.db == Path("/tmp/x/y.db")
    assert settings.token == TOKEN
    assert Settings.from_env(env, allowed_hosts=["c.example"]).allowed_hosts == ("c.example",)


@pytest.mark.usefixtures("wide_console")
def test_the_cli_answers_a_bad_value_in_one_line_with_exit_code_2(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("LEUKOSCOPE_API_TOKEN", raising=False)
    db = tmp_path / "db.sqlite"
    code, out, err = run(capsys, "serve", "--session-hours", "inf", "--db", db, "--model", tmp_path / "none")
    assert code == 2 and err == "error: session_hours must be a finite number (got inf)\n" and not out
    assert not db.exists()
    code, _, err = run(capsys, "serve", "--port", "0", "--db", db)
    assert code == 2 and "Invalid value for '--port'" in err and not db.exists()

"""leukoscope.data.fileio: atomic writes that name the file asked for and keep non-UTF-8 file names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from leukoscope.data.fileio import write_text


def test_text_naming_a_file_that_is_not_utf8_is_written_back_as_its_bytes(tmp_path: Path) -> None:
    name = os.fsdecode(b"smear-\xff.png")  # how Python hands such a name over: a surrogate escape
    write_text(tmp_path / "rows.csv", f"path\n{name}\n")
    assert (tmp_path / "rows.csv").read_bytes() == b"path\nsmear-\xff.png\n"


def test_a_target_that_cannot_be_made_is_named_in_the_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    target = tmp_path / "a-file" / "out.csv"  # no folder can be made under a file
    with pytest.raises(OSError) as info:
        write_text(target, "x")
    assert info.value.filename == str(target)  # not the temporary file's name
    assert list(tmp_path.iterdir()) == [tmp_path / "a-file"]

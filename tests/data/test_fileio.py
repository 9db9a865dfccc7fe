"""leukoscope.data.fileio: atomic writes that name the file asked for and keep non-UTF-8 file names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from leukoscope.data.fileio import save_torch, write_text


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


def test_torch_is_given_the_temporary_file_path_not_a_python_file(tmp_path: Path, monkeypatch) -> None:
    """A Ctrl-C inside a Python write that PyTorch's C++ writer calls came out as RuntimeError; with a path,
    PyTorch writes the file itself and the interrupt arrives as KeyboardInterrupt after it."""
    import torch

    seen: list[object] = []

    def fake_save(obj: object, target: object) -> None:
        seen.append(target)
        Path(target).write_bytes(b"saved")  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "save", fake_save)
    save_torch(tmp_path / "last.pt", {"epoch": 1})
    assert isinstance(seen[0], Path) and seen[0].parent == tmp_path and seen[0].name.endswith(".tmp")
    assert (tmp_path / "last.pt").read_bytes() == b"saved" and list(tmp_path.iterdir()) == [tmp_path / "last.pt"]


class _InterruptedWhilePickled:
    def __reduce__(self):  # the Ctrl-C lands while torch.save pickles the checkpoint
        raise KeyboardInterrupt


def test_an_interrupted_save_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    import torch

    save_torch(tmp_path / "last.pt", {"epoch": 1})
    with pytest.raises(KeyboardInterrupt):
        save_torch(tmp_path / "last.pt", {"epoch": 2, "bad": _InterruptedWhilePickled()})
    assert torch.load(tmp_path / "last.pt")["epoch"] == 1
    assert list(tmp_path.iterdir()) == [tmp_path / "last.pt"]  # no temporary file left

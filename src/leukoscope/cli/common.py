"""Console helpers shared by the CLI commands: one-line errors, progress bars, quiet mode."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from leukoscope.errors import UsageError

console = Console()
err_console = Console(stderr=True)

DISCLAIMER = "Research software, not a certified medical device: never use it alone for a diagnosis."


def debug_enabled() -> bool:
    return os.environ.get("LEUKOSCOPE_DEBUG", "") not in ("", "0")


def one_line(message: str) -> str:
    """A message whose lines (a YAML or SQL error's own, say) are joined, so an error is always one line."""
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(one_line(message))}", highlight=False, soft_wrap=True)


def path_argument(value: str, what: str) -> Path:
    """A path given as an argument; an empty one (an unset shell variable, say) is refused, because as a Path
    it would quietly mean the current folder."""
    if not value.strip():
        raise UsageError(f"{what} is an empty path")
    return Path(value)


def prepare_output_folder(option: str, given: Path, folder: Path) -> None:
    """Make `folder` (where `option` writes `given`) and try a file in it, so a location that cannot be written
    (under a file, /proc, read-only) is one usage error before the work instead of a failure after it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write {option} {given}: {exc.strerror or exc}") from None


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


@contextmanager
def progress_bar(description: str, total: int, *, quiet: bool = False) -> Iterator:
    """A rich progress bar with ETA; yields a callback(done, total). Silent when quiet."""
    if quiet:
        yield lambda done, total: None
        return
    with Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=True,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda done, total: progress.update(task, completed=done, total=total)


class _OneBarAtATime:
    """progress(label, done, total) drawn as one `progress_bar` per label, closed when done reaches total."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self._label: str | None = None
        self._bar: ExitStack | None = None
        self._update: Callable[[int, int], None] | None = None

    def __call__(self, label: str, done: int, total: int) -> None:
        if self._update is not None and label != self._label:
            self.close()
        if self._update is None:
            if done >= total:
                return
            self._bar, self._label = ExitStack(), label
            self._update = self._bar.enter_context(progress_bar(label, total=total, quiet=self.quiet))
        self._update(done, total)
        if done >= total:
            self.close()

    def close(self) -> None:
        bar, self._bar, self._update, self._label = self._bar, None, None, None
        if bar is not None:
            bar.close()


@contextmanager
def labelled_progress(*, quiet: bool = False) -> Iterator[Callable[[str, int, int], None]]:
    """The callback for a library that reports progress(label, done, total) one stretch at a time (training:
    one epoch): a transient bar per label, opened at its first report, closed when done reaches total or
    when the block ends (an error, Ctrl-C). Silent when quiet."""
    bars = _OneBarAtATime(quiet)
    try:
        yield bars
    finally:
        bars.close()

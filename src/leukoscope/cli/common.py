"""Console helpers shared by the CLI commands: one-line errors, progress bars, quiet mode."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console()
err_console = Console(stderr=True)

DISCLAIMER = "Research software, not a certified medical device: never use it alone for a diagnosis."


def debug_enabled() -> bool:
    return os.environ.get("LEUKOSCOPE_DEBUG", "") not in ("", "0")


def error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


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

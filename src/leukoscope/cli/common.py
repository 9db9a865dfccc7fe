"""Console helpers shared by the CLI commands: one-line errors, progress bars, quiet mode."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

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

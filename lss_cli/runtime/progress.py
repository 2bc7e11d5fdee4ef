"""Progress bars on stderr. Off when stderr is not a terminal, with --quiet, and on ranks != 0."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

stderr_console = Console(stderr=True)

_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def progress_enabled(rank: int | None = None) -> bool:
    if rank is None:
        rank = int(os.environ.get("RANK", "0"))
    return not _quiet and rank == 0 and sys.stderr.isatty()


def make_progress(rank: int | None = None, *extra_columns) -> Progress:
    """A rich Progress that renders nothing when disabled (so callers never branch on it)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=stderr_console,
        disable=not progress_enabled(rank),
        transient=False,
    )


def log(message: str) -> None:
    """An informational line on stderr (results go to stdout)."""
    if not _quiet:
        stderr_console.print(message, highlight=False)


def warn(message: str) -> None:
    stderr_console.print(f"[yellow]Warning:[/yellow] {message}", highlight=False)

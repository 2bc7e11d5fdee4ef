"""Progress bars and messages on stderr. Bars are off when stderr is not a terminal, with --quiet,
and on ranks != 0.

Text is never read as rich markup: paths, server messages and hints are the user's text, and a
`[...]` in them (a file `clip [x].mp4`, a `pip install 'lss-cli[plots]'` hint) must print as
written. The consoles here and in `lss_cli.cli.render` have markup off; style comes from `Text`
spans, never from brackets inside a message.
"""

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
from rich.text import Text

stderr_console = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)  # a log file gets whole lines

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
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=stderr_console,
        disable=not progress_enabled(rank),
        transient=False,
    )


def log(message: str, lead: str = "") -> None:
    """An informational line on stderr (results go to stdout); `lead` is printed in bold before it."""
    if not _quiet:
        stderr_console.print(Text.assemble((lead, "bold"), message))


def warn(message: str) -> None:
    stderr_console.print(Text.assemble(("Warning: ", "yellow"), message))


def error(message: str, hint: str | None = None) -> None:
    """The CLI's error line (and hint), shown even with --quiet."""
    stderr_console.print(Text.assemble(("Error: ", "bold red"), message), soft_wrap=True)
    if hint:
        stderr_console.print(Text.assemble(("Hint: ", "dim"), hint), soft_wrap=True)

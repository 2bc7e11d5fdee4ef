"""Rendering results: rich tables on stdout, or JSON with --json. No logic lives here.

Markup is off (see `lss_cli.runtime.progress`): every string prints as written; style is given
with `Text` spans or a cell/column style."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

stdout = Console(markup=False, highlight=False, soft_wrap=True)


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def kv_table(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows.items():
        table.add_row(str(k), str(v))
    return table


def text_table(title: str, header: list[str], rows: list[list[str]]) -> Table:
    """A table of ready-made strings, numbers right-aligned (`lss results compare`, the demo's
    baseline-vs-trained table: both from `lss_cli.eval.compare`)."""
    table = Table(title=title, title_justify="left")
    for col in header:
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(*row)
    return table

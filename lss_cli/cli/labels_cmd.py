"""`lss labels list|show`: the built-in label sets."""

from __future__ import annotations

from typing import Annotated

import typer

from lss_cli.cli import CONTEXT, app
from lss_cli.cli.options import Json

labels_app = typer.Typer(help="Built-in label sets (Kinetics, UCF101, HMDB51, K600 zero-shot, lss530).",
                         context_settings=CONTEXT, no_args_is_help=True)
app.add_typer(labels_app, name="labels")


@labels_app.command("list")
def list_sets(json_out: Json = False) -> None:
    """List the built-in label sets with their sizes."""
    from lss_cli.labels import BUILTIN, load_label_set

    rows = [{"name": k, "classes": len(load_label_set(k)), "description": BUILTIN[k][1]} for k in BUILTIN]
    if json_out:
        from lss_cli.cli.render import print_json

        return print_json(rows)
    from rich.table import Table

    from lss_cli.cli.render import stdout

    table = Table("name", "classes", "description", title="Built-in label sets", title_justify="left")
    for r in rows:
        table.add_row(r["name"], str(r["classes"]), r["description"])
    stdout.print(table)


@labels_app.command("show")
def show(name: Annotated[str, typer.Argument(help="Built-in name or a label file.")], json_out: Json = False) -> None:
    """Print a label set, one `id<TAB>name` per line.

    Example: lss labels show ucf101
    """
    from lss_cli.labels import load_label_set

    ls = load_label_set(name)
    if json_out:
        from lss_cli.cli.render import print_json

        return print_json({"name": ls.name, "source": ls.source, "names": list(ls.names)})
    for i, n in enumerate(ls.names):
        typer.echo(f"{i}\t{n}")

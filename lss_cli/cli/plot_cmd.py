"""`lss plot`: a training run's curves as one PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lss_cli.cli import app
from lss_cli.cli.options import Json


@app.command("plot")
def plot(
    run: Annotated[Path, typer.Argument(help="A training run dir (or its metrics.jsonl).", show_default=False)],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="PNG to write, replaced [default: `RUN/metrics.png`].",
                                             show_default=False)] = None,
    json_out: Json = False,
) -> None:
    """Plot a training run against steps: loss and its parts, collapse diagnostics (teacher
    entropies, gradient norm) and, with `eval.every`, held-out zero-shot accuracy with the best
    checkpoint marked. Reads metrics.jsonl as it is, so a running job can be watched.
    Needs the `plots` extra: pip install 'lss-cli[plots]'.

    Example: lss plot runs/train/tiny -o tiny.png
    """
    from lss_cli.train.plot import plot_run

    summary = plot_run(run, out)
    from lss_cli.cli.render import kv_table, print_json, stdout

    if json_out:
        print_json(summary)
    else:
        stdout.print(kv_table("Plotted", {**summary, "panels": ", ".join(summary["panels"])}))

"""`lss results compare`: evaluation results side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lss_cli.cli import CONTEXT, app
from lss_cli.cli.options import Json

results_app = typer.Typer(help="Work with evaluation results (results.json): compare runs side by side.",
                          context_settings=CONTEXT, no_args_is_help=True)
app.add_typer(results_app, name="results")


@results_app.command("compare")
def compare(
    results: Annotated[list[Path], typer.Argument(help="results.json files, or folders holding them (searched below).",
                                                  show_default=False)],
    label: Annotated[list[str] | None, typer.Option("--label", "-l", help="Column name, once per model in the order "
                                                    "they first appear [default: the checkpoint's file name].")] = None,
    metrics: Annotated[str, typer.Option("--metrics", help="Rows: top1, top5, direction (comma-separated); "
                                         "direction only where time-reversal pairs were scored.")] = "top1,direction",
    fmt: Annotated[str | None, typer.Option("--format", "-f", help="Print markdown | latex | csv instead of the "
                                            "table; with --out, the file's format [default: from the --out suffix].",
                                            show_default=False)] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also write the table to this file (.md, .tex, .csv) "
                                             "[default: none: the terminal only].",
                                             show_default=False)] = None,
    allow_different_protocols: Annotated[bool, typer.Option("--allow-different-protocols", help="Compare results "
                                                            "measured differently (views, splits, classes, templates, "
                                                            "probe settings); the differences are listed.")] = False,
    json_out: Json = False,
) -> None:
    """One table of several models' evaluations: per split and mean ± std, and each model's change
    against the first. A model's results (zero-shot, linear probe, several datasets) share a
    column. Results measured under different protocols are refused, naming the difference.

    Examples:

        lss results compare runs/eval-zero-shot/baseline/results.json runs/eval-zero-shot/lss/results.json

        lss results compare runs/demo/latest/eval --label "baseline (untrained)" --label trained

        lss results compare clip.json lss.json --format latex --out table.tex
    """
    from lss_cli.eval import compare as cmp
    from lss_cli.runtime.outputs import write_text_atomic

    file_format = cmp.format_of(out, fmt) if out is not None else None
    shown = cmp.render_format(fmt) if fmt is not None and out is None else None
    c = cmp.compare(cmp.find_results(results), labels=label or None, metrics=cmp.parse_metrics([metrics]),
                    allow_different_protocols=allow_different_protocols)
    if out is not None and file_format is not None:
        write_text_atomic(out, cmp.render(c, file_format))
    from lss_cli.cli.render import print_json, stdout, text_table

    if json_out:
        return print_json({**cmp.to_dict(c), "out": str(out) if out else None})
    if shown is not None:
        print(cmp.render(c, shown), end="")
        return None
    stdout.print(text_table(cmp.title(c), cmp.header(c), cmp.text_rows(c)))
    for line in cmp.notes(c):
        stdout.print(line)
    if out is not None:
        stdout.print(f"written: {out}")
    return None

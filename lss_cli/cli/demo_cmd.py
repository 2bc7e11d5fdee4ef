"""`lss demo`: the main job on built-in defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lss_cli.cli import app
from lss_cli.cli.options import Json, Quiet


@app.command("demo")
def demo(
    output_dir: Annotated[Path | None, typer.Option("--output-dir", "-o", help="Where to write (default: runs/demo/<timestamp>).")] = None,
    quiet: Quiet = False,
    json_out: Json = False,
) -> None:
    """Run the pipeline on the built-in synthetic dataset with the tiny model, on CPU.

    Currently: generates the synthetic action videos and shows what is in them.

    Example: lss demo
    """
    from lss_cli.demo import run_demo
    from lss_cli.runtime.progress import set_quiet

    set_quiet(quiet)
    result = run_demo(output_dir)
    from lss_cli.cli.data_cmd import render_synth_summary

    render_synth_summary(result["data"], json_out)

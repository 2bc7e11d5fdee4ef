"""`lss data ...`: dataset utilities (synthetic clips for now)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lss_cli.cli import app
from lss_cli.cli.options import Json, Quiet

data_app = typer.Typer(help="Datasets: generate synthetic action videos.",
                       context_settings={"help_option_names": ["-h", "--help"]}, no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("synth")
def synth(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the dataset into.")],
    classes: Annotated[int, typer.Option(help="Motion classes (2-10).")] = 8,
    videos_per_class: Annotated[int, typer.Option(help="Clips per class.")] = 12,
    frames: Annotated[int, typer.Option(help="Frames per clip.")] = 16,
    size: Annotated[int, typer.Option(help="Frame size in pixels (square, even).")] = 112,
    fps: Annotated[float, typer.Option(help="Frame rate.")] = 8.0,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same dataset).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Write into a non-empty folder.")] = False,
    quiet: Quiet = False,
    json_out: Json = False,
) -> None:
    """Generate labelled synthetic action videos whose class is defined by motion.

    Writes videos/, classes.txt, train.txt and test.txt (`path label`), and descriptions.jsonl.

    Example: lss data synth runs/data/synthetic --classes 8 --videos-per-class 12
    """
    from lss_cli.data.synth import SynthSpec, generate
    from lss_cli.runtime.rundir import prepare_run_dir

    spec = SynthSpec(classes=classes, videos_per_class=videos_per_class, frames=frames, size=size, fps=fps, seed=seed)
    spec.validate()
    prepare_run_dir(out_dir, overwrite=overwrite)
    summary = generate(out_dir, spec)
    render_synth_summary(summary, json_out)


def render_synth_summary(summary: dict, json_out: bool) -> None:
    from lss_cli.cli.render import kv_table, print_json, stdout

    if json_out:
        return print_json(summary)
    stdout.print(kv_table("Synthetic dataset", {
        "root": summary["root"],
        "classes": ", ".join(summary["classes"]),
        "clips": f"{summary['train']} train / {summary['test']} test",
        "clip": f"{summary['frames']} frames, {summary['size']}x{summary['size']} px, {summary['fps']} fps",
        "files": "classes.txt, train.txt, test.txt, descriptions.jsonl, videos/",
    }))

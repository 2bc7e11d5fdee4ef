"""`lss demo`: the whole pipeline on the built-in synthetic dataset with the tiny model, on CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lss_cli.cli import app
from lss_cli.cli.options import Json, Quiet, config_default
from lss_cli.config import TrainConfig


@app.command("demo")
def demo(
    output_dir: Annotated[Path | None, typer.Option("--output-dir", "-o", help="Where to write [default: `runs/demo/<timestamp>`].")] = None,
    classes: Annotated[int, typer.Option("--classes", help="Motion classes in the synthetic set (2-10).")] = 8,
    videos_per_class: Annotated[int, typer.Option("--videos-per-class", help="Clips per class (a quarter are test clips).")] = 24,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Training epochs." + config_default(
        TrainConfig, "optim.epochs", shipped="synthetic_tiny"))] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the data, the model initialisation and training.")] = 0,
    quiet: Quiet = False,
    json_out: Json = False,
) -> None:
    """Run the whole pipeline on synthetic videos with the tiny model, on CPU, in a few minutes.

    Generates the motion benchmark (time-reversal class pairs), builds the concept banks with the
    tiny CLIP pretrained on stills of the same world, evaluates the untrained model (zero-shot and
    linear probe, top-1 and direction accuracy), trains with LSS, exports and evaluates the
    trained teacher the same way, and prints baseline vs trained with every path written.

    Example: lss demo
    """
    from lss_cli.demo import DemoSettings, run_demo
    from lss_cli.runtime.progress import set_quiet

    set_quiet(quiet)
    summary = run_demo(output_dir, DemoSettings(classes=classes, videos_per_class=videos_per_class, epochs=epochs,
                                                seed=seed))
    from lss_cli.cli.render import print_json

    print_json(summary) if json_out else render_demo(summary)


# What the table can and cannot say; kept next to it so nobody reads more into a toy than it holds.
READING = (
    "Chance: top-1 = 1 / classes, direction = 50 %. The baseline is the untrained model, i.e. the tiny CLIP applied\n"
    "per frame and averaged: it is at chance on direction by construction (a clip's mate is the same frames\n"
    "reversed). Shows: the whole LSS pipeline on real video files, and whether training made the model tell a\n"
    "motion from its reversal. Does not show: anything about real CLIP or real video; on this benchmark the README\n"
    "(\"Does training help?\") reports no gain over 3 seeds, and why."
)


def render_demo(summary: dict[str, Any]) -> None:
    from rich.text import Text

    from lss_cli.cli.render import stdout, text_table

    d, v = summary["dataset"], summary["views"]
    # The rows are `lss results compare`'s on the four results files (`summary["compare_command"]`).
    stdout.print(text_table(f"LSS demo: {len(d['classes'])} synthetic motion classes ({len(d['pairs'])} time-reversal "
                            f"pairs), {d['train']} train / {d['test']} test clips; lss-tiny (synthetic-world), "
                            f"{summary['training']['steps']} training steps; eval {v['count']} view(s) "
                            f"x {v['num_frames']} frames", summary["table"]["header"], summary["table"]["rows"]))
    stdout.print(READING)
    stdout.print(f"The same table from the results files: {summary['compare_command']}")
    stdout.print(Text("Written", style="bold"))
    width = max(len(k) for k in summary["paths"])
    for name, path in summary["paths"].items():  # whole paths, one per line (a table would cut them)
        stdout.print(f"  {name:<{width}}  {path}")
    stdout.print(f"total {summary['seconds']:.0f} s")

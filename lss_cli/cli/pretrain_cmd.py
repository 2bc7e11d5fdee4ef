"""`lss pretrain-tiny`: contrastive pretraining of the tiny CLIP on captioned synthetic stills."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lss_cli.cli import app
from lss_cli.cli.options import Json, Overwrite, Quiet


@app.command("pretrain-tiny")
def pretrain_tiny(
    out: Annotated[Path, typer.Option("--out", help="Weights file to write (compact safetensors).")],
    steps: Annotated[int, typer.Option("--steps", help="Optimizer steps.")] = 1500,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Image-caption pairs per step.")] = 128,
    lr: Annotated[float, typer.Option("--lr", help="AdamW peak learning rate.")] = 3e-3,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the initialisation and of the stream of stills.")] = 0,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    json_out: Json = False,
) -> None:
    """Pretrain the tiny `lss-tiny` CLIP on captioned synthetic stills (a stand-in for CLIP's web
    data), so the demo's "CLIP" knows the words of its world before LSS adapts it to video.

    Prints zero-shot accuracy per attribute (position, size, shape, colour, pointing) on held-out
    stills against chance. The package ships the result of the defaults as
    `--pretrained synthetic-world` of `lss-tiny`; this command remakes it (seeded, CPU; bit for
    bit with OMP_NUM_THREADS=1, the thread count it was made with). A report goes to `<out>.json`.

    Examples:

        lss pretrain-tiny --out tiny-world.safetensors

        lss eval zero-shot --dataset synthetic --root runs/data/synthetic --checkpoint none --model lss-tiny --pretrained tiny-world.safetensors
    """
    from lss_cli.errors import ConfigError
    from lss_cli.runtime.progress import set_quiet
    from lss_cli.train.pretrain import PretrainSettings, pretrain_to_file

    set_quiet(quiet)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} exists", hint="pass --overwrite to replace it, or choose another --out")
    settings = PretrainSettings(steps=steps, batch_size=batch_size, lr=lr, seed=seed)
    settings.validate()
    report = pretrain_to_file(settings, out)
    from lss_cli.cli.render import print_json

    print_json(report) if json_out else render_report(report)


def render_report(report: dict[str, Any]) -> None:
    from rich.table import Table

    from lss_cli.cli.render import stdout

    table = Table(title=f"lss-tiny pretrained on synthetic stills: {report['settings']['steps']} steps, "
                        f"{report['seconds']:.0f} s; zero-shot on held-out stills", title_justify="left")
    for col in ("attribute", "accuracy (%)", "chance (%)"):
        table.add_column(col, justify="right")
    for name, a in report["attributes"].items():
        table.add_row(name, f"{100 * a['accuracy']:.1f}", f"{100 * a['chance']:.1f}")
    stdout.print(table)
    stdout.print(f"weights: {report['weights']}")

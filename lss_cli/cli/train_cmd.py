"""`lss train` and `lss export`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lss_cli.cli import CONTEXT, app
from lss_cli.cli.options import (
    Device,
    DryRun,
    Json,
    OutputDir,
    Overrides,
    Overwrite,
    Quiet,
    Resume,
    Seed,
    flag,
)

AllowConfigChange = Annotated[bool, flag(
    "--allow-config-change",
    help="With --resume: accept a config that differs from the checkpoint's in keys that change the "
    "result (the resumed run is then not an exact continuation).")]


@app.command("train", context_settings=CONTEXT)
def train(
    args: Overrides = None,
    output_dir: OutputDir = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
    allow_config_change: AllowConfigChange = False,
    device: Device = None,
    seed: Seed = None,
    dry_run: DryRun = False,
    quiet: Quiet = False,
    json_out: Json = False,
) -> None:
    """Self-distil a CLIP image tower into a video model on unlabeled videos (LSS).

    ARGS: an optional YAML config followed by dotted key=value overrides.

    Examples:

        lss train examples/synthetic_tiny.yaml --output-dir runs/train/tiny

        lss train examples/synthetic_tiny.yaml optim.epochs=1 --output-dir runs/train/tiny --overwrite

        lss train runs/train/tiny --resume

        lss train synthetic_tiny --output-dir runs/train/tiny

        torchrun --nproc-per-node 8 -m lss_cli train examples/lss_k400_vitb16.yaml data.root=/data/k400

    A shipped config can be named (synthetic_tiny, lss_k400_vitb16). A run dir given with --resume
    (as ARGS or --output-dir) stands for the run's own config.yaml.
    --resume continues from the newest intact checkpoint (damaged newer ones are skipped, with a
    warning) and refuses a config that differs from the checkpoint's unless --allow-config-change.
    --overwrite moves the old run's metrics and checkpoints into a replaced-* folder of the run dir.
    """
    from lss_cli.cli.options import split_config_args
    from lss_cli.config import TrainConfig, dump_yaml, load_config
    from lss_cli.runtime.progress import set_quiet
    from lss_cli.train.resume import resume_inputs

    set_quiet(quiet)
    path, overrides = split_config_args(args)
    path, output_dir = resume_inputs(path, output_dir, resume)
    cfg = load_config(TrainConfig, path, overrides, flags={
        "run.output_dir": str(output_dir) if output_dir else None, "run.resume": resume or None,
        "run.overwrite": overwrite or None, "run.allow_config_change": allow_config_change or None,
        "run.device": device, "run.seed": seed})
    if dry_run:
        from lss_cli.train.inputs import check_inputs

        check_inputs(cfg)
        typer.echo(dump_yaml(cfg), nl=False)
        return
    from lss_cli.train.loop import train as run_train

    summary = run_train(cfg)
    from lss_cli.cli.render import kv_table, print_json, stdout

    if not summary.pop("is_main"):
        return  # ranks != 0 stay quiet
    if json_out:
        print_json(summary)
    else:
        stdout.print(kv_table("Training finished", summary))


@app.command("export", context_settings=CONTEXT)
def export(
    checkpoint: Annotated[Path, typer.Argument(help="Run dir, its checkpoints/ dir, or a checkpoints/step_* dir.")],
    out: Annotated[Path, typer.Option("--out", help="Output .safetensors file; with --hub, the folder to write.")],
    hub: Annotated[bool, flag("--hub", help="Write a Hugging Face Hub model folder: model.safetensors, config.json "
                                            "and a model card (README.md); `lss push` uploads it.")] = False,
    results: Annotated[list[Path] | None, typer.Option(
        "--results", help="With --hub: results.json of `lss eval` (or a folder of them) for the card; repeatable "
        "[default: the matching ones under runs/eval-*/].")] = None,
    repo: Annotated[str | None, typer.Option("--repo", help="With --hub: the org/name the card's examples load [default: a placeholder, <org>/<name>].")] = None,
    license_id: Annotated[str | None, typer.Option(
        "--license", help="With --hub: the card's licence id [default: the base weights' licence, or other].")] = None,
    overwrite: Overwrite = False,
    json_out: Json = False,
) -> None:
    """Export the teacher video encoder (+ CLIP's text side) for eval and predict.

    Examples:

        lss export runs/train/tiny --out tiny-video.safetensors

        lss export runs/train/tiny --hub --out hub/tiny --results runs/eval-zero-shot --repo me/lss-tiny

    --hub writes a folder in the Hub layout; results whose model id is this model's are put in the
    card. --overwrite replaces an existing --hub folder.
    """
    from lss_cli.cli.render import kv_table, print_json, stdout

    if not hub:
        if results or repo or license_id or overwrite:
            from lss_cli.errors import ConfigError

            raise ConfigError("--results, --repo, --license and --overwrite go with --hub", hint="add --hub")
        from lss_cli.models.artefact import export_teacher

        summary = export_teacher(checkpoint, out)
    else:
        from lss_cli.share import export_folder

        summary = export_folder(checkpoint, out, results=results or [], repo=repo, licence=license_id,
                                overwrite=overwrite)
        if not json_out:
            summary = {**summary, "results": len(summary["results"]), "files": ", ".join(summary["files"])}
    print_json(summary) if json_out else stdout.print(kv_table("Exported", summary))

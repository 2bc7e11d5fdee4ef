"""`lss features`: per-video features of a list to a safetensors file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lss_cli.cli import app
from lss_cli.cli.eval_cmd import (
    Args,
    Checkpoint,
    Clips,
    Crops,
    Dataset,
    Device,
    Frames,
    ListFile,
    Model,
    Pretrained,
    Root,
)
from lss_cli.cli.options import Json, Quiet, config_default
from lss_cli.config import EvalConfig


@app.command("features")
def features(
    out: Annotated[Path, typer.Option("--out", "-o", help="The safetensors file to write (replaced atomically).",
                                      show_default=False)],
    args: Args = None,
    dataset: Dataset = None,
    root: Root = None,
    list_file: ListFile = None,
    split: Annotated[str | None, typer.Option("--split", help="Split of ucf101/hmdb51/kinetics600-zs (1-3) or "
                                              "Kinetics (val, train) [default: the dataset's first].")] = None,
    part: Annotated[str, typer.Option("--part", help="test | train: which list of an official split.")] = "test",
    checkpoint: Checkpoint = None,
    model: Model = None,
    pretrained: Pretrained = None,
    kind: Annotated[str | None, typer.Option("--kind", help="pre-proj (the probe's features) | proj (the joint "
                                             "embedding, L2-normalised per view)."
                                             + config_default(EvalConfig, "features"))] = None,
    num_frames: Frames = None,
    num_clips: Clips = None,
    num_crops: Crops = None,
    device: Device = None,
    quiet: Quiet = False,
    json_out: Json = False,
) -> None:
    """Encode every video of a list and write its features: `features` [N, D] (the mean over views),
    `labels`, `ok`, and the paths, classes, model id and views as metadata. Uses the eval feature
    cache, so a list `lss eval` has encoded costs nothing.

    Examples:

        lss features --dataset list --list-file my_videos.txt --root /data/mine --checkpoint model.safetensors -o mine.safetensors

        lss features --dataset ucf101 --root /data/UCF-101 --split 1 --part train --checkpoint none -o ucf-train1.safetensors
    """
    from lss_cli.cli.options import split_config_args
    from lss_cli.config import load_config
    from lss_cli.eval.export_features import export_features
    from lss_cli.runtime.progress import set_quiet

    set_quiet(quiet)
    path, overrides = split_config_args(args)
    flags = {"dataset": dataset, "root": root, "list_file": list_file, "checkpoint": checkpoint, "model": model,
             "pretrained": pretrained, "features": kind, "num_frames": num_frames, "num_clips": num_clips,
             "num_crops": num_crops, "device": device}
    cfg = load_config(EvalConfig, path, overrides, flags=flags)
    summary = export_features(cfg, out, split=split, part=part)
    if not summary.pop("is_main"):  # under torchrun, rank 0 reports
        return
    from lss_cli.cli.render import kv_table, print_json, stdout

    print_json(summary) if json_out else stdout.print(kv_table("Features written", summary))

"""`lss eval zero-shot` and `lss eval linear-probe`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from lss_cli.cli import eval_app
from lss_cli.cli.options import Json, OutputDir, Overwrite, Quiet, config_default, device_option, overrides
from lss_cli.config import EvalConfig


def _default(key: str, meaning: str | None = None) -> str:
    return config_default(EvalConfig, key, meaning)


Args = overrides("batch_size=32 num_workers=8")
Dataset = Annotated[str | None, typer.Option("--dataset", help="ucf101 | hmdb51 | kinetics400 | kinetics600 | "
                                             "kinetics600-zs | list | folder | synthetic." + _default("dataset"))]
Root = Annotated[str | None, typer.Option("--root", help="Folder the videos are in." + _default("root"))]
ListFile = Annotated[str | None, typer.Option("--list-file", help="Test list (dataset list; required for kinetics600-zs; "
                                              "a Kinetics CSV for kinetics400/600)."
                                              + _default("list_file", "the dataset's own test list"))]
TrainList = Annotated[str | None, typer.Option("--train-list", help="Training list of the probe when --list-file is given."
                                               + _default("train_list", "the dataset's own training list"))]
Splits = Annotated[str | None, typer.Option("--splits", help="Splits to evaluate, comma-separated: 1,2,3 (ucf101, hmdb51, "
                                            "kinetics600-zs) or val (kinetics400/600; their test split may lack labels)."
                                            + _default("splits", "1,2,3, or val for kinetics400/600"))]
Checkpoint = Annotated[str | None, typer.Option("--checkpoint", help="Exported model (file, folder or hf-hub:org/name[@rev]), run dir or checkpoint; `none` = CLIP baseline."
                                                + _default("checkpoint", "the CLIP baseline"))]
Model = Annotated[str | None, typer.Option("--model", help="CLIP model for the baseline (open_clip name or hf-hub:org/name)." + _default("model"))]
Pretrained = Annotated[str | None, typer.Option("--pretrained", help="Baseline weights: tag, file, local-dir:PATH, hf-hub:org/name or none."
                                                + _default("pretrained"))]
Templates = Annotated[str | None, typer.Option("--templates", help="Prompt templates (prompts/ name or path)." + _default("templates"))]
Frames = Annotated[int | None, typer.Option("--num-frames", help="Frames per view." + _default("num_frames"))]
Clips = Annotated[int | None, typer.Option("--num-clips", help="Temporal views per video." + _default("num_clips"))]
Crops = Annotated[int | None, typer.Option("--num-crops", help="Spatial views: 1 or 3." + _default("num_crops"))]
Device = device_option(EvalConfig)
Out = Annotated[str | None, typer.Option("--out", help="Results JSON." + _default("out", "`<run dir>/results.json`"))]
Pairs = Annotated[str | None, typer.Option("--pairs", help="Time-reversal class pairs (`class<TAB>mate` a line) for the "
                                           "direction accuracy." + _default("pairs", "a synthetic root's pairs.txt"))]
Features = Annotated[str | None, typer.Option("--features", help="pre-proj (CLIP's probes) | proj." + _default("features"))]
ValSplit = Annotated[str | None, typer.Option("--val-split", help="Validation part for the L2 search: grouped (source "
                                              "videos kept together) | stratified (video by video)."
                                              + _default("probe_val_split"))]
Standardize = Annotated[bool | None, typer.Option("--standardize/--no-standardize", help="z-score the features with the "
                                                  "training set's statistics (CLIP does not)."
                                                  + _default("probe_standardize"))]


def _flags(**kw: Any) -> dict[str, Any]:
    splits = kw.pop("splits")
    if splits is not None:  # numbers stay numbers (official splits), names stay names (Kinetics' val)
        kw["splits"] = [int(s) if s.strip().isdigit() else s.strip() for s in splits.split(",") if s.strip()]
    return kw  # `--checkpoint none` stays a string, so it also overrides a checkpoint set in YAML


def _run(protocol: str, args, flags: dict[str, Any], output_dir, overwrite: bool, quiet: bool, json_out: bool) -> None:
    from lss_cli.cli.options import split_config_args
    from lss_cli.config import EvalConfig, load_config
    from lss_cli.eval.results import evaluate
    from lss_cli.runtime.progress import set_quiet

    set_quiet(quiet)
    path, overrides = split_config_args(args)
    cfg = load_config(EvalConfig, path, overrides, flags=flags)
    results = evaluate(cfg, protocol, output_dir=output_dir, overwrite=overwrite)
    if results["is_main"]:  # under torchrun, rank 0 reports
        render_results(results, json_out)


def render_results(results: dict[str, Any], json_out: bool) -> None:
    from rich.table import Table

    from lss_cli.cli.render import print_json, stdout

    if json_out:
        slim = {k: v for k, v in results.items() if k not in ("splits", "config", "environment", "is_main")}
        slim["splits"] = [{k: v for k, v in s.items() if k not in ("confusion", "predictions", "per_class_top1", "classes")}
                          for s in results["splits"]]
        return print_json(slim)
    has_top5 = "top5" in results["summary"]
    has_direction = "direction_accuracy" in results["summary"]
    table = Table(title=f"{results['protocol']} on {results['dataset']} — {results['checkpoint']} "
                        f"({results['views']['count']} view(s) x {results['views']['num_frames']} frames)",
                  title_justify="left")
    metrics = ["top1", *(["top5"] if has_top5 else []), *(["direction_accuracy"] if has_direction else [])]
    for col in ("split", *(METRIC_COLUMNS[k] for k in metrics), "listed", "evaluated", "unreadable"):
        table.add_column(col, justify="right", min_width=len(col))  # 80 columns wrap the values, never cut a header
    for s in results["splits"]:
        table.add_row(s["split"], *(_percent(s.get(k)) for k in metrics),
                      str(s["videos_listed"]), str(s["videos_evaluated"]), str(s["videos_unreadable"]))
    m = results["summary"]
    table.add_row("mean ± std", *(f"{100 * m[k]['mean']:.2f} ± {100 * m[k]['std']:.2f}" for k in metrics), "", "", "")
    stdout.print(table)
    _print_unreadable(results["splits"])
    stdout.print(f"results: {results['results_file']}")
    for plot in results.get("plots", []):
        stdout.print(f"plot: {plot}")


METRIC_COLUMNS = {"top1": "top-1", "top5": "top-5", "direction_accuracy": "direction"}  # results key -> column


def _percent(value: float | None) -> str:
    """A fraction as a percentage; "-" where a split has no value (no test video with a mate)."""
    return "-" if value is None else f"{100 * value:.2f}"


def _print_unreadable(splits: list[dict[str, Any]]) -> None:
    """Every unreadable video, by path: test ones count as errors, train ones were left out of the fit."""
    from rich.text import Text

    from lss_cli.cli.render import stdout

    for s in splits:
        for bad in s["unreadable"]:
            stdout.print(Text.assemble(("unreadable", "yellow"), f" (split {s['split']}, counted as an error): "
                                       f"{bad['path']}: {bad['error']}"))
        for bad in s.get("train_unreadable", []):
            stdout.print(Text.assemble(("unreadable training video", "yellow"),
                                       f" (split {s['split']}, left out of the fit): {bad['path']}: {bad['error']}"))


@eval_app.command("zero-shot")
def zero_shot(args: Args = None, dataset: Dataset = None, root: Root = None, list_file: ListFile = None,
              splits: Splits = None, checkpoint: Checkpoint = None, model: Model = None, pretrained: Pretrained = None,
              templates: Templates = None, pairs: Pairs = None, num_frames: Frames = None, num_clips: Clips = None,
              num_crops: Crops = None, device: Device = None, out: Out = None, output_dir: OutputDir = None, overwrite: Overwrite = False,
              quiet: Quiet = False, json_out: Json = False) -> None:
    """Zero-shot top-1/top-5 per split, mean ± std; the plain CLIP baseline when no checkpoint is given.
    With time-reversal class pairs (--pairs, or a synthetic dataset's pairs.txt) also the direction accuracy.

    Examples:

        lss eval zero-shot --dataset ucf101 --root data/ucf101 --splits 1,2,3 --checkpoint model.safetensors

        lss eval zero-shot --dataset hmdb51 --root data/hmdb51 --checkpoint none --model ViT-B-16 --pretrained openai

        lss eval zero-shot --dataset kinetics400 --root data/k400 --checkpoint model.safetensors

    Kinetics-400/600 are evaluated on their labelled val split (`ROOT/annotations/val.csv` or
    `ROOT/val.csv`, videos under `ROOT/val/`) unless --splits names another; a split without
    labels is refused.
    """
    _run("zero-shot", args, _flags(dataset=dataset, root=root, list_file=list_file, splits=splits, checkpoint=checkpoint,
                                   model=model, pretrained=pretrained, templates=templates, pairs=pairs, num_frames=num_frames,
                                   num_clips=num_clips, num_crops=num_crops, device=device, out=out),
         output_dir, overwrite, quiet, json_out)


@eval_app.command("linear-probe")
def linear_probe(args: Args = None, dataset: Dataset = None, root: Root = None, list_file: ListFile = None,
                 train_list: TrainList = None, splits: Splits = None, checkpoint: Checkpoint = None, model: Model = None, pretrained: Pretrained = None,
                 features: Features = None, val_split: ValSplit = None, standardize: Standardize = None,
                 pairs: Pairs = None, num_frames: Frames = None, num_clips: Clips = None, num_crops: Crops = None, device: Device = None,
                 out: Out = None, output_dir: OutputDir = None, overwrite: Overwrite = False, quiet: Quiet = False,
                 json_out: Json = False) -> None:
    """Linear probe on frozen features (CLIP's protocol): L2 searched over 1e-6..1e6 on held-out groups of
    train videos, refit on all of them; top-1 per split, mean ± std. `probe_l2_range=[1e-4,1e4]` narrows the search.
    With time-reversal class pairs (--pairs, or a synthetic dataset's pairs.txt) also the direction accuracy.

    Example: lss eval linear-probe --dataset ucf101 --root data/ucf101 --checkpoint model.safetensors --features pre-proj
    """
    _run("linear-probe", args, _flags(dataset=dataset, root=root, list_file=list_file, train_list=train_list, splits=splits,
                                      checkpoint=checkpoint, model=model, pretrained=pretrained, features=features,
                                      probe_val_split=val_split, probe_standardize=standardize,
                                      pairs=pairs, num_frames=num_frames, num_clips=num_clips, num_crops=num_crops, device=device,
                                      out=out), output_dir, overwrite, quiet, json_out)



"""`lss data ...`: synthetic clips, plain lists from official split files, unreadable-video checks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lss_cli.cli import CONTEXT, app
from lss_cli.cli.options import Json, Overwrite, Quiet, flag

data_app = typer.Typer(help="Datasets: synthetic videos, lists from official split files, unreadable-video checks.",
                       context_settings=CONTEXT, no_args_is_help=True)
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
    background: Annotated[str, typer.Option(help="texture (smooth random texture) | plain (a uniform background per clip).")] = "texture",
    overwrite: Annotated[bool, flag("--overwrite", help="Write into a non-empty folder.")] = False,
    quiet: Quiet = False,
    json_out: Json = False,
) -> None:
    """Generate labelled synthetic action videos whose class is defined by motion.

    Writes videos/, classes.txt, train.txt and test.txt (`path label`), descriptions.jsonl and
    pairs.txt: the time-reversal class pairs (moving left / moving right, ...), whose clips are the
    same frames in reverse order, for `lss eval`'s direction accuracy.

    Example: lss data synth runs/data/synthetic --classes 8 --videos-per-class 12
    """
    from lss_cli.data.synth import SynthSpec, generate
    from lss_cli.runtime.progress import set_quiet
    from lss_cli.runtime.rundir import prepare_run_dir

    set_quiet(quiet)
    spec = SynthSpec(classes=classes, videos_per_class=videos_per_class, frames=frames, size=size, fps=fps, seed=seed,
                     background=background)
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
        "clip": f"{summary['frames']} frames, {summary['size']}x{summary['size']} px, {summary['fps']} fps, "
                f"{summary['background']} background",
        "time-reversal pairs": ", ".join(f"{a} / {b}" for a, b in summary["pairs"]) or "none",
        "files": "classes.txt, train.txt, test.txt, descriptions.jsonl, pairs.txt, videos/",
    }))


@data_app.command("prepare")
def prepare(
    dataset: Annotated[str, typer.Argument(help="ucf101 | hmdb51 | kinetics400 | kinetics600")],
    root: Annotated[Path, typer.Option("--root", help="Where the videos are (UCF101: ROOT/<Class>/*.avi).")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the lists and classes.txt into.")],
    splits_dir: Annotated[Path | None, typer.Option(
        "--splits-dir", help="Official split files [default: the package's UCF101/HMDB51 copies; "
        "Kinetics: ROOT/annotations, then ROOT].")] = None,
    drop_missing: Annotated[bool, flag("--drop-missing", help="Leave videos that are not under --root out of the lists.")] = False,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    json_out: Json = False,
) -> None:
    """Write plain `path label` lists and classes.txt from a dataset's official files, and report
    listed videos that are missing under --root (missing.txt).

    Example: lss data prepare ucf101 --root /data/UCF-101 --out lists/ucf101
    """
    from lss_cli.data.prepare import prepare_lists
    from lss_cli.runtime.progress import set_quiet
    from lss_cli.runtime.rundir import prepare_run_dir

    set_quiet(quiet)
    prepare_run_dir(out, overwrite=overwrite)
    summary = prepare_lists(dataset, root, out, splits_dir=splits_dir, drop_missing=drop_missing)
    render_prepare_summary(summary, json_out)


def render_prepare_summary(summary: dict, json_out: bool) -> None:
    from rich.table import Table

    from lss_cli.cli.render import print_json, stdout

    if json_out:
        return print_json(summary)
    table = Table(title=f"{summary['dataset']}: lists in {summary['out']} ({summary['classes']} classes)",
                  title_justify="left")
    for col in ("list", "videos", "missing", "written"):
        table.add_column(col, justify="left" if col == "list" else "right")
    for row in summary["lists"]:
        table.add_row(Path(row["list"]).name, str(row["videos"]), str(row["missing"]), str(row["written"]))
    stdout.print(table)
    if summary["missing"]:
        what = "left out of the lists" if summary["dropped_missing"] else "kept in the lists"
        stdout.print(f"{summary['missing']} listed videos are missing under {summary['root']} ({what}); "
                     f"see {summary['missing_report']}")
        if summary["missing"] == sum(row["videos"] for row in summary["lists"]):
            stdout.print("None of the listed videos was found: is --root the folder holding the class folders?")


@data_app.command("check")
def check(
    list_file: Annotated[Path, typer.Argument(help="A list file: `path label`, `path`, CSV, or a Kinetics CSV.")],
    root: Annotated[Path, typer.Option("--root", help="Folder the list's paths are relative to.")],
    workers: Annotated[int | None, typer.Option("--workers", help="Parallel decoding processes [default: min(8, CPUs)].")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds before a hanging decode counts as unreadable.")] = 60.0,
    report: Annotated[Path | None, typer.Option(help="Report file [default: LIST-STEM.unreadable.tsv in the current folder].")] = None,
    quiet: Quiet = False,
    json_out: Json = False,
) -> None:
    """Open every video of a list and decode its first and last frame; write a report of the
    unreadable ones (path and reason) and exit 1 if there are any.

    Example: lss data check lists/ucf101/test1.txt --root /data/UCF-101 --workers 8
    """
    from lss_cli.data.check import run_check
    from lss_cli.errors import LssError
    from lss_cli.runtime.progress import set_quiet

    set_quiet(quiet)
    result = run_check(list_file, root, workers=workers, timeout=timeout, report=report)
    render_check_result(result.to_dict(), json_out)
    if result.bad:
        raise LssError(f"{len(result.bad)} of {result.checked} videos are unreadable (report: {result.report})",
                       hint="re-download or remove them; training replaces them and evaluation reports them")


def render_check_result(result: dict, json_out: bool, max_rows: int = 50) -> None:
    from rich.table import Table

    from lss_cli.cli.render import print_json, stdout

    if json_out:
        return print_json(result)
    if not result["bad"]:
        stdout.print(f"All {result['checked']} videos are readable (report: {result['report']}).")
        return
    table = Table(title=f"Unreadable videos: {result['unreadable']} of {result['checked']}", title_justify="left")
    table.add_column("path")
    table.add_column("reason")
    for row in result["bad"][:max_rows]:
        table.add_row(row["path"], row["reason"])
    stdout.print(table)
    if len(result["bad"]) > max_rows:
        stdout.print(f"... and {len(result['bad']) - max_rows} more; all are in {result['report']}")

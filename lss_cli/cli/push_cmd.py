"""`lss push`: upload an export folder to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lss_cli.cli import CONTEXT, app
from lss_cli.cli.options import DryRun, Json, flag


@app.command("push", context_settings=CONTEXT)
def push(
    folder: Annotated[Path, typer.Argument(help="A folder written by `lss export RUN --hub --out DIR`.")],
    repo: Annotated[str, typer.Option("--repo", help="The model repo to create or update, as org/name.")],
    private: Annotated[bool, flag("--private", help="Create the repo private (an existing repo keeps its visibility).")] = False,
    revision: Annotated[str | None, typer.Option("--revision", help="Branch to commit to (created if missing) [default: main].")] = None,
    dry_run: DryRun = False,
    json_out: Json = False,
) -> None:
    """Upload an export folder to the Hugging Face Hub as one commit (the only step that needs a network).

    The token comes from HF_TOKEN or `hf auth login`; HF_ENDPOINT names another Hub.

    Example: lss push hub/tiny --repo me/lss-tiny
    """
    from lss_cli.share import push_folder

    summary = push_folder(folder, repo, private=private, revision=revision, dry_run=dry_run)
    from lss_cli.cli.render import kv_table, print_json, stdout

    if json_out:
        print_json(summary)
    else:
        files = summary.pop("files")
        summary["files"] = ", ".join(f"{name} ({size} B)" for name, size in files.items())
        stdout.print(kv_table("Would upload" if dry_run else "Pushed", summary))

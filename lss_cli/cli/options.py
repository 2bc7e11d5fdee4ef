"""Option types shared by commands, so every command spells them the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

# None = the config's value (default "auto": CUDA when present), so YAML and overrides can set it too.
Device = Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda | cuda:N (auto = CUDA when present).",
                                           show_default=False)]
Seed = Annotated[int | None, typer.Option("--seed", help="Random seed (each rank adds its rank).")]
OutputDir = Annotated[Path | None, typer.Option("--output-dir", "-o", help="Run directory (default: `runs/<command>/<timestamp>`).")]


def flag(*names: str, help: str, **kwargs: Any) -> Any:
    """A boolean option shown as a flag: Typer's help would print a `<bool>` value it does not take
    (an empty metavar shows none)."""
    return typer.Option(*names, help=help, metavar="", **kwargs)


DryRun = Annotated[bool, flag("--dry-run", help="Check inputs and show what would happen; do no heavy work.")]
Quiet = Annotated[bool, flag("--quiet", "-q", help="No progress bars or info lines on stderr.")]
Json = Annotated[bool, flag("--json", help="Print the result as JSON on stdout.")]
Overwrite = Annotated[bool, flag("--overwrite", help="Write into a non-empty output location.")]
Resume = Annotated[bool, flag("--resume", help="Continue the run in --output-dir.")]
Overrides = Annotated[list[str] | None, typer.Argument(help="Dotted key=value overrides, e.g. optim.lr=1e-4.", show_default=False)]


def split_config_args(args: list[str] | None) -> tuple[Path | None, list[str]]:
    """`[cfg.yaml] [k=v ...]` -> (path or None, overrides). A first argument without '=' is the file."""
    args = list(args or [])
    if args and "=" not in args[0]:
        return Path(args[0]), args[1:]
    return None, args

"""Option types shared by commands, so every command spells them the same way, and the conventions
every command's help follows:

- an option shows its default: Typer prints `[default: X]` for a real default; an option whose
  None means "the config's value" (so YAML and overrides can set it too) ends its help with
  `config_default(...)`: `[default: X (config key K)]`, X read from the config dataclass;
- a boolean option is shown as a flag, --help included (`LssCommand`, `LssGroup`);
- an overrides argument's example names keys of the command's own config (`overrides`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from lss_cli.config import TrainConfig, read_yaml
from lss_cli.resources import example_path


def _value(config: type, key: str) -> Any:
    """The dataclass default of a dotted key, e.g. ("run.seed" of TrainConfig) -> 0."""
    node: Any = config()
    for name in key.split("."):
        if not (dataclasses.is_dataclass(node) and name in {f.name for f in dataclasses.fields(node)}):
            raise KeyError(f"{config.__name__} has no key {key!r}")  # a typo in a command's help: a bug
        node = getattr(node, name)
    return node


def config_default(config: type, key: str, meaning: str | None = None, shipped: str | None = None) -> str:
    """` [default: X (config key K)]` for the help of an option that stands for config key `key`.

    X is the default in the dataclass `config` (a list as `a,b`); `meaning` says what a None
    default does instead ("the CLIP baseline"); `shipped` names a shipped config whose value, if
    it sets one, is the default instead (`lss demo` trains with synthetic_tiny's); that YAML is
    only read here, not validated."""
    value = _value(config, key)
    where = ""
    if shipped is not None:
        node: Any = read_yaml(example_path(shipped))
        for name in key.split("."):
            node = node.get(name, value) if isinstance(node, dict) else value
        value, where = node, f" of {shipped}"
    if value is None:
        shown = f"none = {meaning}" if meaning else "none"
    elif isinstance(value, bool):
        shown = str(value).lower()  # as written in YAML
    elif isinstance(value, (list, tuple)):
        shown = ",".join(map(str, value))
    else:
        shown = str(value)
    return f" [default: {shown} (config key {key}{where})]"


class _FlagsTakeNoValue:
    """Shows every boolean option as a flag, --help included: recent Typer prints a `<bool>` value
    in the help table that a flag does not take (an empty metavar shows none)."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class LssCommand(_FlagsTakeNoValue, TyperCommand):
    """Every `lss` command (set by `lss_cli.cli._register`, so commands need not name it)."""


class LssGroup(_FlagsTakeNoValue, TyperGroup):
    """`lss` and its sub-apps (`lss eval`, `lss data`, ...)."""


DEVICE_HELP = "auto | cpu | cuda | cuda:N (auto = CUDA when present)."


def device_option(config: type, key: str = "device") -> Any:
    """--device for a command whose config holds the device at `key` (None = the config's value)."""
    return Annotated[str | None, typer.Option("--device", help=DEVICE_HELP + config_default(config, key),
                                              show_default=False)]


Device = device_option(TrainConfig, "run.device")
Seed = Annotated[int | None, typer.Option("--seed", help="Random seed (each rank adds its rank)."
                                          + config_default(TrainConfig, "run.seed"))]
OutputDir = Annotated[Path | None, typer.Option("--output-dir", "-o", help="Run directory [default: `runs/<command>/<timestamp>`].")]


def flag(*names: str, help: str, **kwargs: Any) -> Any:
    """A boolean option shown as a flag (every command shows its boolean options so: `LssCommand`)."""
    return typer.Option(*names, help=help, metavar="", **kwargs)


DryRun = Annotated[bool, flag("--dry-run", help="Check inputs and show what would happen; do no heavy work.")]
Quiet = Annotated[bool, flag("--quiet", "-q", help="No progress bars or info lines on stderr.")]
Json = Annotated[bool, flag("--json", help="Print the result as JSON on stdout.")]
Overwrite = Annotated[bool, flag("--overwrite", help="Write into a non-empty output location.")]
Resume = Annotated[bool, flag("--resume", help="Continue the run in --output-dir.")]


def overrides(example: str, config: str = "Optional YAML config") -> Any:
    """The `[CONFIG.yaml] [KEY=VALUE]...` argument; `example` uses keys of the command's config."""
    return Annotated[list[str] | None, typer.Argument(
        help=f"{config}, then dotted key=value overrides, e.g. {example}.", show_default=False)]


Overrides = overrides("optim.lr=1e-4", "Optional YAML config (a file, a shipped config's name, or with "
                      "--resume a run dir)")  # lss train's


def split_config_args(args: list[str] | None) -> tuple[Path | None, list[str]]:
    """`[cfg.yaml] [k=v ...]` -> (path or None, overrides). A first argument without '=' is the file."""
    args = list(args or [])
    if args and "=" not in args[0]:
        return Path(args[0]), args[1:]
    return None, args

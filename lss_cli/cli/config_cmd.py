"""`lss config show`: print a resolved config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lss_cli.cli import CONTEXT, app
from lss_cli.cli.options import Json

config_app = typer.Typer(help="Inspect configs: defaults, YAML files and overrides resolved.",
                         context_settings=CONTEXT, no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show")
def show(
    file: Annotated[Path | None, typer.Argument(help="YAML config (omit to see the defaults).")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="Dotted key=value overrides.")] = None,
    kind: Annotated[str, typer.Option("--for", help="Which command's config: train | describe | build-concepts | eval.")] = "train",
    json_out: Json = False,
) -> None:
    """Print the resolved config (defaults < FILE < overrides) as YAML.

    Examples:

        lss config show examples/synthetic_tiny.yaml optim.lr=1e-4

        lss config show --for describe
    """
    from lss_cli.config import CONFIGS, dump_yaml, load_config, to_dict
    from lss_cli.errors import ConfigError

    if kind not in CONFIGS:
        raise ConfigError(f"--for {kind!r}: unknown config kind", hint=f"one of {', '.join(CONFIGS)}")
    if file is not None and "=" in str(file):  # `lss config show k=v` without a file
        overrides, file = [str(file), *(overrides or [])], None
    cfg = load_config(CONFIGS[kind], file, overrides or [])
    if json_out:
        from lss_cli.cli.render import print_json

        print_json(to_dict(cfg))
    else:
        typer.echo(dump_yaml(cfg), nl=False)

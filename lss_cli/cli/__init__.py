"""The `lss` command line: a thin Typer layer over the library.

Each command parses its options, loads its config, calls one library function and renders the
result. Heavy imports (torch, open_clip, torchcodec) happen inside command bodies so that
`lss --help` is instant.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated

import typer

from lss_cli import __version__
from lss_cli.errors import LssError

CONTEXT = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    name="lss",
    help="LSS: turn an image CLIP model into a video model without labels, and evaluate it.\n\n"
    "Quick start: `lss demo` runs the whole pipeline on synthetic videos with a tiny model on CPU.",
    context_settings=CONTEXT,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    add_completion=False,
)
eval_app = typer.Typer(help="Evaluate a model: zero-shot classification and linear probing.",
                       context_settings=CONTEXT, no_args_is_help=True)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"lss {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool | None, typer.Option("--version", callback=_version_callback, is_eager=True, metavar="",
                                                     help="Print the version and exit.")] = None,
) -> None:
    """LSS: language-based action concept spaces for video self-supervised learning."""


COMMAND_MODULES = ("demo_cmd", "pretrain_cmd", "describe_cmd", "concepts_cmd", "train_cmd", "plot_cmd", "eval_cmd",
                   "results_cmd", "features_cmd", "predict_cmd", "push_cmd", "data_cmd", "labels_cmd", "config_cmd")


def _register() -> None:
    # Import order = order in `lss --help` (the pipeline's order, then utilities).
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"lss_cli.cli.{name}")

    # The eval sub-app is mounted only once it has commands (register only what works), and once.
    if eval_app.registered_commands and all(g.typer_instance is not eval_app for g in app.registered_groups):
        app.add_typer(eval_app, name="eval")
    _use_lss_classes(app)


def _use_lss_classes(typer_app: typer.Typer) -> None:
    """Every group and command renders its help the project's way (boolean options as flags,
    --help included: `LssCommand`), without each command having to ask for it."""
    from typer.core import TyperCommand

    from lss_cli.cli.options import LssCommand, LssGroup

    typer_app.info.cls = typer_app.info.cls or LssGroup  # unset: Typer's falsy placeholder
    for command in typer_app.registered_commands:
        if command.cls in (None, TyperCommand):  # unset (Typer records its own default)
            command.cls = LssCommand
    for group in typer_app.registered_groups:
        _use_lss_classes(group.typer_instance)


def _print_error(message: str, hint: str | None = None) -> None:
    from lss_cli.runtime.progress import error

    error(message, hint)


def _click_exceptions() -> tuple[tuple, tuple, tuple]:
    """(exit, abort, usage) exception classes: Typer >= 0.25 vendors click, older Typer uses click."""
    exits, aborts, usage = [typer.Exit], [typer.Abort], []
    try:
        from typer._click import exceptions as vendored

        usage.append(vendored.ClickException)
    except ImportError:
        pass
    try:
        import click

        exits.append(click.exceptions.Exit)
        aborts.append(click.exceptions.Abort)
        usage.append(click.ClickException)
    except ImportError:
        pass
    return tuple(exits), tuple(aborts), tuple(usage)


def main(argv: list[str] | None = None) -> None:
    """Entry point of `lss`: maps the project's errors to exit codes.

    0 success, 1 anticipated runtime failure, 2 usage/config error, 130 interrupted.
    Tracebacks only with LSS_DEBUG=1.
    """
    debug = os.environ.get("LSS_DEBUG", "") not in ("", "0")
    _register()
    exit_errors, abort_errors, usage_errors = _click_exceptions()
    try:
        rv = app(args=argv, prog_name="lss", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except exit_errors as e:
        code = e.exit_code
    except (KeyboardInterrupt, *abort_errors):
        _print_error("interrupted")
        code = 130
    except usage_errors as e:
        e.show()
        code = 2
    except LssError as e:
        if debug:
            traceback.print_exc()
        _print_error(e.message, e.hint)
        code = e.exit_code
    except Exception as e:  # a bug: say so plainly, keep the traceback for LSS_DEBUG
        if debug:
            traceback.print_exc()
        _print_error(f"unexpected {type(e).__name__}: {e}",
                     "this is probably a bug in lss_cli; rerun with LSS_DEBUG=1 for the traceback and report it")
        code = 1
    sys.exit(code)

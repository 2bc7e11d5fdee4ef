"""Every `lss` command's --help follows the same conventions (lss_cli/cli/options.py): each option
shows its default, a boolean option is shown as a flag (no `<bool>` value, --help included), and
each dotted key=value example names a key of that command's own config."""

from __future__ import annotations

import dataclasses
import re

import pytest
import typer.main
from typer.testing import CliRunner

from lss_cli.cli import _register, app
from lss_cli.config import (
    ConceptsConfig,
    DescribeConfig,
    EvalConfig,
    TrainConfig,
    load_config,
    parse_override,
)

# Which config each command's overrides (and examples of them) are read into.
CONFIG_OF = {
    "train": TrainConfig,
    "build-concepts": ConceptsConfig,
    "describe": DescribeConfig,
    "eval zero-shot": EvalConfig,
    "eval linear-probe": EvalConfig,
    "features": EvalConfig,
    "config show": TrainConfig,  # --for train is its default
}


def _tree() -> tuple[list[list[str]], list[tuple[list[str], object]]]:
    """(every group's path, every command's (path, click command)), walked from the real app."""
    _register()
    groups, commands = [], []

    def walk(group, path: list[str]) -> None:
        groups.append(path)
        for name, cmd in sorted(group.commands.items()):
            if hasattr(cmd, "commands"):
                walk(cmd, [*path, name])
            else:
                commands.append(([*path, name], cmd))

    walk(typer.main.get_command(app), [])
    return groups, commands


GROUPS, COMMANDS = _tree()


def _help(path: list[str]) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def test_the_walk_finds_every_command():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"train", "eval zero-shot", "eval linear-probe", "data synth", "labels list", "config show",
            "concepts info", "build-concepts", "describe", "predict", "demo"} <= names


@pytest.mark.parametrize("path", GROUPS + [p for p, _ in COMMANDS], ids=lambda p: " ".join(p) or "lss")
def test_boolean_options_show_no_value(path):
    assert "<bool>" not in _help(path)


def _option_rows(text: str) -> dict[str, str]:
    """Each option's row of the Options panel (its help and default lines), by its first long name."""
    rows: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        if line.startswith(("╰", "╭")):
            name = None
            continue
        m = re.match(r"│\s+(?:\*\s+)?(--[\w-]+)", line)
        if m:
            name = m.group(1)
            rows[name] = ""
        if name is not None:
            rows[name] += line + "\n"
    return rows


@pytest.mark.parametrize("path, command", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_option_shows_its_default(path, command):
    rows = _option_rows(_help(path))
    for param in command.params:
        longs = [o for o in param.opts if o.startswith("--")]
        if param.param_type_name != "option" or param.required or not longs:
            continue
        if param.is_flag and not param.secondary_opts:
            continue  # a plain flag is off unless given
        row = rows.get(longs[0])
        assert row is not None, f"{longs[0]} not found in `lss {' '.join(path)} --help`"
        assert "[default:" in row or "required" in row, f"lss {' '.join(path)} {longs[0]} shows no default:\n{row}"


def _has_key(cls: type, key: str) -> bool:
    node = cls
    for name in key.split("."):
        fields = {f.name: f for f in dataclasses.fields(node)}
        if name not in fields:
            return False
        node = fields[name].default_factory if dataclasses.is_dataclass(fields[name].default_factory) else None
    return True


OVERRIDE = re.compile(r"(?<![\w./:=-])([a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*)=(\S+)")


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=" ".join)
def test_override_examples_name_keys_of_the_commands_config(path):
    text = _help(path)
    examples = [(m.group(0), m.group(1)) for m in OVERRIDE.finditer(text) if m.group(0) != "key=value"]
    command = " ".join(path)
    if command not in CONFIG_OF:
        assert examples == [], f"`lss {command} --help` shows overrides but CONFIG_OF does not know its config"
        return
    cls = CONFIG_OF[command]
    for token, key in examples:
        token = token.rstrip(".,;)│")
        assert parse_override(token)[0] == key
        assert _has_key(cls, key), f"`lss {command} --help`: {key!r} is not a key of {cls.__name__}"
        load_config(cls, None, [token])  # the example's value is valid too
    if command in ("train", "eval zero-shot", "eval linear-probe", "describe"):
        assert examples, f"`lss {command} --help` should show an override example"

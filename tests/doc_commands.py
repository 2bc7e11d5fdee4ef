"""Check the `lss` commands a document shows without running them: every option exists and takes
the value given, and every `key=value` override names a real config key with a value of its type.

A walkthrough whose commands were renamed under it fails here, not on a user's cluster. Used by
tests/test_readme_walkthrough.py.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import typer

from lss_cli.cli import _register, app
from lss_cli.config import CONFIGS, load_config

# `lss <words>` -> the config its positional `[CONFIG] key=value ...` arguments build.
CONFIG_OF = {("train",): CONFIGS["train"], ("describe",): CONFIGS["describe"],
             ("build-concepts",): CONFIGS["build-concepts"], ("eval", "zero-shot"): CONFIGS["eval"],
             ("eval", "linear-probe"): CONFIGS["eval"], ("features",): CONFIGS["eval"]}


def shell_lines(markdown: str, heading: str | None = None) -> list[str]:
    """The commands in the ```bash blocks of the section under `heading` (up to the next heading of
    the same or a higher level; None: the whole document): continuation lines joined, comments dropped."""
    section = markdown if heading is None else _section(markdown, heading)
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip() if not line.lstrip().startswith("#") else ""
            if line:
                lines.append(line)
    return lines


def _section(markdown: str, heading: str) -> str:
    """The text under `heading`, up to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    all_lines = markdown.splitlines(keepends=True)
    start = next(i for i, line in enumerate(all_lines) if line.rstrip("\n") == heading)
    end, fenced = len(all_lines), False
    for i in range(start + 1, len(all_lines)):
        fenced ^= all_lines[i].startswith("```")  # a `# comment` in a code block is not a heading
        if not fenced and re.match(rf"#{{1,{level}}} ", all_lines[i]):
            end = i
            break
    return "".join(all_lines[start:end])


def shell_words(line: str) -> list[str]:
    """The words of a simple shell command: leading VAR=value assignments dropped, and everything from
    the first redirection or pipe on (`2> log`, `| tee`)."""
    words = shlex.split(line)
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        words = words[1:]
    cut = next((i for i, w in enumerate(words) if re.fullmatch(r"\d?>>?|<|\||&&|;", w)), len(words))
    return words[:cut]


def lss_argv(line: str) -> list[str] | None:
    """The arguments after `lss` of a shell line (`lss ...`, `.venv/bin/lss ...`, `torchrun ... -m
    lss_cli ...`, `srun ... torchrun ...`, with leading VAR=value assignments); None for other lines."""
    words = shell_words(line)
    for i, w in enumerate(words):
        if w == "lss" or w.endswith("/lss"):
            return words[i + 1:]
        if w == "-m" and i + 1 < len(words) and words[i + 1] == "lss_cli":
            return words[i + 2:]
    return None


def check_lss_command(argv: list[str]) -> None:
    """Parse `lss argv` as the CLI would, without running it; raise on any unknown command, option,
    option value, config key or config value."""
    _register()  # what `lss` does before parsing: mount every command
    command = typer.main.get_command(app)  # (Typer's click: its own vendored copy in new Typer)
    words: list[str] = []
    args = list(argv)
    while hasattr(command, "commands"):  # a group: the next word names a command in it
        name = args.pop(0) if args else ""
        if name not in command.commands:
            raise AssertionError(f"no command `lss {' '.join([*words, name])}`")
        command, words = command.commands[name], [*words, name]
    ctx = command.make_context(" ".join(["lss", *words]), args, resilient_parsing=False)
    cls = CONFIG_OF.get(tuple(words))
    if cls is None:
        return
    positional = [a for a in ctx.params.get("args") or [] if a]
    path = None
    if positional and "=" not in positional[0]:
        first, positional = positional[0], positional[1:]
        if Path(first).is_file() or "/" not in first and not first.endswith(".yaml"):
            path = first  # a config file here, or a shipped config's name (not a run dir, nor the user's own file)
    load_config(cls, path, positional)


def check_document(path: Path, heading: str | None = None) -> list[list[str]]:
    """Check every `lss` command of a document's section (None: of the whole document); returns
    them (so a test can also see that the section holds the commands it should)."""
    commands = [argv for line in shell_lines(path.read_text(), heading) if (argv := lss_argv(line)) is not None]
    for argv in commands:
        try:
            check_lss_command(argv)
        except Exception as e:  # click usage errors and config errors alike
            raise AssertionError(f"{path.name} ({heading}): `lss {' '.join(argv)}` does not parse: {e}") from e
    return commands

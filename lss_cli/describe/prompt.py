"""Prompt templates for `lss describe`: a versioned YAML file asks for `{n}` descriptions of `{category}`.

The template's file and sha256 go into every record, so a descriptions file says exactly which
prompt made it, and a resumed run can tell when the prompt changed since.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from lss_cli.errors import InputFileError
from lss_cli.resources import load_prompt_yaml, prompts_dir

FORMATS = ("json", "lines")
_PROMPT_KEYS = ("name", "version", "format", "system", "user")


@dataclass(frozen=True)
class PromptTemplate:
    """A versioned prompt file. Only `{category}` and `{n}` are substituted; other braces are text."""

    name: str
    version: str
    system: str  # may be empty
    user: str  # must contain {category}
    format: str  # how replies are parsed: json | lines
    file: str  # as recorded: prompts/<file>.yaml for a shipped prompt, else the path given
    sha256: str  # of the file's bytes

    def messages(self, category: str, n: int) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": fill(self.system, category, n)}] if self.system.strip() else []
        return [*msgs, {"role": "user", "content": fill(self.user, category, n)}]


def fill(text: str, category: str, n: int) -> str:
    """`text` with `{n}` and `{category}` replaced, stripped."""
    # {n} first, so a class name that happens to contain "{n}" is left alone.
    return text.replace("{n}", str(n)).replace("{category}", category).strip()


def load_prompt(name_or_path: str) -> PromptTemplate:
    data, path, raw = load_prompt_yaml(
        name_or_path, keys=_PROMPT_KEYS, required=("name", "version", "user"),
        hint=f"a prompt file has the keys {', '.join(_PROMPT_KEYS)} (see prompts/describe_actions_v1.yaml)")
    fmt, system, user = data.get("format", "json"), str(data.get("system") or ""), str(data["user"])
    if fmt not in FORMATS:
        raise InputFileError(f"prompt file {path}: format {fmt!r} is not one of {', '.join(FORMATS)}")
    if "{category}" not in user or "{n}" not in system + user:
        raise InputFileError(f"prompt file {path}: the user template must contain {{category}}, and "
                             "{n} must appear in the system or user template",
                             hint="these placeholders are replaced by the class name and the count")
    shipped = path.resolve().parent == prompts_dir().resolve()
    return PromptTemplate(str(data["name"]), str(data["version"]), system, user, fmt,
                          f"prompts/{path.name}" if shipped else str(name_or_path),
                          hashlib.sha256(raw).hexdigest())

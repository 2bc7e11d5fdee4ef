"""Category template sets (`prompts/*_templates_*.yaml`) and the prompts they render.

A category name is encoded through every template of a set and the vectors are averaged
(`lss_cli.concepts.encode.build_category_bank`); this module only reads and renders the text.
Kept free of torch: predict and evaluation read templates before any model is loaded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lss_cli.errors import InputFileError
from lss_cli.resources import load_prompt_yaml


@dataclass(frozen=True)
class TemplateSet:
    name: str  # the file's `name:`
    version: int | str  # the file's `version:`
    templates: tuple[str, ...]  # each holds exactly one `{}` for the category name
    path: str  # file it was read from
    sha256: str  # of that file

    def render(self, name: str) -> list[str]:
        return [t.format(name) for t in self.templates]


def text_sha256(lines: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def load_templates(name_or_path: str | Path) -> TemplateSet:
    """A template set: a name shipped in prompts/ (e.g. `action_templates_v1`) or a YAML path."""
    hint = "a template file has `name:`, `version:` and `templates:`, a list of strings each with one {}"
    data, path, raw = load_prompt_yaml(name_or_path, what="template file", hint=hint)
    if not isinstance(data.get("templates"), list) or not data["templates"]:
        raise InputFileError(f"{path}: no `templates:` list found", hint=hint)
    templates = data["templates"]
    for i, t in enumerate(templates):
        if not isinstance(t, str) or t.count("{}") != 1 or set("{}") & set(t.replace("{}", "", 1)):
            raise InputFileError(f"{path}: template {i} ({t!r}) must be text with exactly one {{}} and no other braces",
                                 hint=hint)
    if len(set(templates)) != len(templates):
        dup = next(t for t in templates if templates.count(t) > 1)
        raise InputFileError(f"{path}: template {dup!r} appears more than once", hint="remove the repeat")
    return TemplateSet(str(data.get("name", path.stem)), data.get("version", 1), tuple(templates),
                       str(path), hashlib.sha256(raw).hexdigest())


def render_prompts(names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Name-major prompts: `[name_0 x every template, name_1 x every template, ...]`."""
    return [t.format(n) for n in names for t in templates]

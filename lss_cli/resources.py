"""Files shipped with the package: prompt templates (the repo's `prompts/`, linked into the package)."""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

from lss_cli.errors import ConfigError


def prompts_dir() -> Path:
    return Path(str(resources.files("lss_cli").joinpath("prompts")))


def prompt_path(name_or_path: str | Path) -> Path:
    """A prompt/template YAML: an existing path, or a name shipped in prompts/ (with or without .yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    stem = path.name[:-5] if path.name.endswith(".yaml") else path.name
    shipped = prompts_dir() / f"{stem}.yaml"
    if shipped.is_file():
        return shipped
    names = sorted(p.stem for p in prompts_dir().glob("*.yaml"))
    close = difflib.get_close_matches(stem, names, n=3)
    raise ConfigError(f"prompt file {str(name_or_path)!r} not found (not a path, not a shipped prompt)",
                      hint=(f"did you mean {', '.join(close)}? " if close else "") + f"shipped: {', '.join(names) or 'none'}")


def example_path(name: str) -> Path:
    """A config shipped in examples/ (linked into the package, so installed copies have it too)."""
    path = Path(str(resources.files("lss_cli").joinpath("examples"))) / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"example config {name!r} not found in {path.parent}")
    return path

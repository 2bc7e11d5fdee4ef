"""Files shipped with the package: prompt templates (the repo's `prompts/`, linked into the package)."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from lss_cli.errors import ConfigError, InputFileError
from lss_cli.textfiles import decode_text, read_bytes


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


def load_prompt_yaml(name_or_path: str | Path, *, what: str = "prompt file", keys: Sequence[str] | None = None,
                     required: Sequence[str] = (), hint: str | None = None) -> tuple[dict[str, Any], Path, bytes]:
    """A prompt/template YAML (found by `prompt_path`) read once -> (its top-level mapping, the
    resolved path, the file's bytes for hashing).

    Checks that it parses and is a mapping; with `keys`, that it holds no other keys; that each of
    `required` has a non-empty value. Errors name the file as `what` and carry `hint`."""
    path = prompt_path(name_or_path)
    raw = read_bytes(path, what)
    try:
        data = yaml.safe_load(decode_text(raw, path, what))
    except (yaml.YAMLError, ValueError) as e:  # ValueError: an integer too long to convert
        raise InputFileError(f"{what} {path} is not valid YAML: {e}", hint=hint) from None
    if not isinstance(data, dict):
        raise InputFileError(f"{what} {path}: expected a mapping" + (f" with {', '.join(keys)}" if keys else ""),
                             hint=hint)
    unknown = sorted(set(map(str, data)) - set(keys)) if keys is not None else []
    missing = [k for k in required if not data.get(k)]
    if unknown or missing:
        raise InputFileError(f"{what} {path}: " + "; ".join(
            ([f"unknown keys {', '.join(unknown)}"] if unknown else [])
            + ([f"missing {', '.join(missing)}"] if missing else [])), hint=hint)
    return data, path, raw


def examples_dir() -> Path:
    return Path(str(resources.files("lss_cli").joinpath("examples")))


def shipped_configs() -> list[str]:
    """Names of the configs shipped in examples/ (`lss train synthetic_tiny` runs one by name)."""
    return sorted(p.stem for p in examples_dir().glob("*.yaml"))


def example_path(name: str) -> Path:
    """A config shipped in examples/ (linked into the package, so installed copies have it too)."""
    path = examples_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"example config {name!r} not found in {path.parent}")
    return path

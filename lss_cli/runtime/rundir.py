"""Run directories (SPEC §2): `runs/<command>/<timestamp>[-name]/` with config.yaml and env.json."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from lss_cli import __version__
from lss_cli.errors import ConfigError


def default_run_dir(command: str, name: str | None = None, root: str | Path = "runs") -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / command / (f"{stamp}-{name}" if name else stamp)


def prepare_run_dir(path: str | Path, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Create `path`, refusing a non-empty directory unless resuming or overwriting.

    Overwrite keeps existing files (they are replaced one by one as the run writes them); it never
    deletes a directory the user pointed at.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"run dir {path} exists and is not a directory", hint="choose another --output-dir")
    if path.is_dir() and any(path.iterdir()) and not (resume or overwrite):
        raise ConfigError(
            f"run dir {path} is not empty",
            hint="pass --resume to continue that run, --overwrite to write into it anyway, "
            "or choose another --output-dir",
        )
    if resume and not path.is_dir():
        raise ConfigError(f"cannot resume: {path} does not exist", hint="check --output-dir")
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write via a temporary file + rename so a crash never leaves a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_sha(cwd: str | Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(device: str | None = None) -> dict[str, Any]:
    """What env.json records: argv, versions, git sha, device. Never environment variables (secrets)."""
    return {
        "argv": sys.argv,
        "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {
            "lss_cli": __version__,
            **{d: _version(d) for d in ("torch", "torchvision", "torchcodec", "open_clip_torch", "numpy")},
        },
        "git_sha": git_sha(),
        "device": device,
    }


def write_run_files(run_dir: str | Path, config_yaml: str, device: str | None = None) -> None:
    run_dir = Path(run_dir)
    write_text_atomic(run_dir / "config.yaml", config_yaml)
    write_text_atomic(run_dir / "env.json", json.dumps(environment(device), indent=2) + "\n")

"""Run directories: `runs/<command>/<timestamp>[-name]/` with config.yaml and env.json.

A default run dir is created atomically (mkdir without exist_ok), with a `-2`, `-3`, ... suffix when
another run took the name in the same second; under torch.distributed rank 0 chooses and the other
ranks receive its path (`make_run_dir`). Output files are written by `lss_cli.runtime.outputs`.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch.distributed as torch_dist

from lss_cli import __version__
from lss_cli.errors import ConfigError, InputFileError, LssError
from lss_cli.runtime.dist import is_distributed
from lss_cli.runtime.outputs import os_reason, write_text_atomic


# --------------------------------------------------------------------------------------------
# Run directories
# --------------------------------------------------------------------------------------------
def _timestamp() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def default_run_dir(command: str, name: str | None = None, root: str | Path = "runs") -> Path:
    """The default run dir's name (not created; `make_run_dir` creates a unique one)."""
    stamp = _timestamp()
    return Path(root) / command / (f"{stamp}-{name}" if name else stamp)


def create_unique_dir(base: str | Path) -> Path:
    """Create `base`, or `base-2`, `base-3`, ... when taken: each mkdir is atomic, so two processes
    starting in the same second never share a directory."""
    base = Path(base)
    path, n = base, 1
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                path.mkdir()
                return path
            except FileExistsError:
                n += 1
                path = base.with_name(f"{base.name}-{n}")
    except OSError as e:
        raise ConfigError(f"cannot create the run dir {path}: {os_reason(e)}",
                          hint="pass --output-dir with a writable folder, or run from a writable folder") from None


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
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the run dir {path}: {os_reason(e)}",
                          hint="choose a writable --output-dir") from None
    return path


def make_run_dir(command: str, output_dir: str | Path | None = None, *, name: str | None = None,
                 resume: bool = False, overwrite: bool = False, root: str | Path = "runs") -> Path:
    """The run dir of `command`, created: `output_dir` when given (`prepare_run_dir`'s rules), else a
    new unique `root/<command>/<timestamp>[-name][-N]`.

    Under torch.distributed rank 0 creates it and broadcasts the path; every rank returns the same
    path, or raises rank 0's error (no rank waits forever for a rank that failed)."""
    output_dir = output_dir or None  # an empty config value means the default
    if resume and output_dir is None:
        raise ConfigError("cannot resume without a run dir", hint="pass --output-dir with the run to continue")
    shared = is_distributed() and torch_dist.get_world_size() > 1
    if shared and torch_dist.get_rank() != 0:
        return _receive_run_dir()
    try:
        path = (prepare_run_dir(output_dir, resume=resume, overwrite=overwrite) if output_dir is not None
                else create_unique_dir(default_run_dir(command, name, root)))
    except LssError as e:
        if shared:
            torch_dist.broadcast_object_list([(None, type(e).__name__, e.message, e.hint)], src=0)
        raise
    if shared:
        torch_dist.broadcast_object_list([(str(path), None, None, None)], src=0)
    return path


def _receive_run_dir() -> Path:
    payload: list[Any] = [None]
    torch_dist.broadcast_object_list(payload, src=0)
    path, kind, message, hint = payload[0]
    if path is None:
        raise {"LssError": LssError, "InputFileError": InputFileError}.get(kind, ConfigError)(message, hint=hint)
    return Path(path)


# --------------------------------------------------------------------------------------------
# What a run dir records
# --------------------------------------------------------------------------------------------
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

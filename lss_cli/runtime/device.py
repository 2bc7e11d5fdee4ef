"""Device selection: `auto` means the local CUDA device when present, else CPU."""

from __future__ import annotations

import os

import torch

from lss_cli.config import check_device
from lss_cli.errors import ConfigError


def resolve_device(name: str = "auto"):
    check_device(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but CUDA is not available", hint="use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return dev

"""Safetensors files written like every other output (`lss_cli.runtime.outputs`): atomically, with
the umask's mode."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from lss_cli.runtime.outputs import replacing


def save_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """`safetensors.torch.save_file` made atomic, with the umask's mode instead of its 0600.

    save_file writes the file itself (no bytes copy of a large model in memory) and replaces the
    temp file with a new 0600 one; the mode the kernel gave the temp file is put back before the
    rename."""
    path = Path(path)
    with replacing(path) as (tmp, fd):
        mode = os.fstat(fd).st_mode & 0o777
        os.close(fd)
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, mode)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    return path

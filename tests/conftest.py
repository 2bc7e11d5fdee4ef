"""Shared fixtures. Tests run on CPU, offline, with the tiny open_clip model shipped in the package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub lookup would otherwise hang ~45 s before failing

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


def run_lss(*args: str, cwd: Path | str | None = None, env: dict | None = None, timeout: float = 600,
            input: str | None = None) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (`python -m lss_cli`), as a user would."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "lss_cli", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, input=input)


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory) -> Path:
    """A small synthetic dataset shared by the whole session (generated once, ~1 s)."""
    from lss_cli.data.synth import SynthSpec, generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, SynthSpec(classes=4, videos_per_class=4, frames=8, size=64, seed=0))
    return root


@pytest.fixture(scope="session")
def tiny_clip():
    from lss_cli.models.clip import load_clip

    return load_clip("lss-tiny", None, seed=0)

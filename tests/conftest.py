"""Shared fixtures. Tests run on CPU, offline, with the tiny open_clip model shipped in the package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

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


def die_when_asked(asked: Path, count: int) -> None:
    """Inside a DataLoader worker: wait until the main process has asked for batch `count` (see
    `counting_batches`), then die the way the kernel's out-of-memory killer kills (SIGKILL). The
    death then surfaces where the main process waits for data, not at a random point (PyTorch's
    SIGCHLD handler raises it wherever the main thread is when the signal comes)."""
    import signal
    import time

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (asked.exists() and asked.read_text() == str(count)):
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGKILL)


def counting_batches(loader, asked: Path):
    """Iterate `loader`, writing to `asked` how many batches have been asked for before each fetch."""
    it, n = iter(loader), 0
    while True:
        n += 1
        asked.write_text(str(n))
        try:
            yield next(it)
        except StopIteration:
            return


def make_train_data(root: Path) -> Path:
    """16 training clips of 4 classes (24 videos: 6 per class) and their concept bank in `root`
    (tiny model, seed 0): the inputs of the short training runs."""
    from lss_cli.concepts.build import build_concepts
    from lss_cli.config import ConceptsConfig
    from lss_cli.data.synth import SynthSpec, generate

    generate(root, SynthSpec(classes=4, videos_per_class=6, frames=8, size=64, seed=0))
    build_concepts(ConceptsConfig(labels=str(root / "classes.txt"), descriptions=str(root / "descriptions.jsonl"),
                                  out=str(root / "concepts.safetensors"), model="lss-tiny", pretrained=None,
                                  device="cpu"))
    return root


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


BAD = ("bad/zero.mp4", "bad/truncated.mp4", "bad/missing.mp4", "bad/text.mp4")  # the bad_dataset's bad entries


@pytest.fixture(scope="session")
def bad_dataset(tmp_path_factory, synth_dataset):
    """The 12 synthetic training clips + a zero-byte file, a truncated file, a missing file and a
    text file renamed .mp4 (16 entries: 4 full batches of 4)."""
    root = tmp_path_factory.mktemp("bad")
    shutil.copytree(synth_dataset / "videos", root / "videos")
    shutil.copy(synth_dataset / "classes.txt", root / "classes.txt")
    good = (synth_dataset / "train.txt").read_text().splitlines()
    (root / "bad").mkdir()
    (root / "bad/zero.mp4").write_bytes(b"")
    data = (synth_dataset / good[0].split()[0]).read_bytes()
    (root / "bad/truncated.mp4").write_bytes(data[: len(data) // 2])
    (root / "bad/text.mp4").write_text("this is not a video, just text renamed to .mp4\n" * 20)
    lines = good[:6] + [f"{BAD[0]} 0", f"{BAD[1]} 1"] + good[6:] + [f"{BAD[2]} 2", f"{BAD[3]} 3"]
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "test.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def zs(tmp_path_factory):
    """The small zero-shot set of clip_reference.py (built once per session)."""
    from clip_reference import zero_shot_set

    return zero_shot_set(tmp_path_factory)


@pytest.fixture(scope="module")
def zs_model(zs):
    """lss-tiny with the zero-shot set's weights, as `lss eval` loads a plain CLIP baseline."""
    from lss_cli.models.artefact import load_video_model

    return load_video_model("none", model="lss-tiny", pretrained=str(zs["weights"]))


class HostToDevice(TorchDispatchMode):
    """Records every op that takes a CPU tensor and returns a tensor on another device (a host->device
    copy). Run code on the "meta" device under it: meta tensors have no data, so any op that would
    read device data on the host (a host sync on a GPU: nonzero, .item(), bool()) raises there."""

    def __init__(self):
        super().__init__()
        self.copies: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.device.type for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        outputs = {t.device.type for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)}
        if "cpu" in inputs and outputs - {"cpu"}:
            self.copies.append(str(func))
        return out

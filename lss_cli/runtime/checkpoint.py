"""Training checkpoints: atomic, resumable to the exact step, and safe to load.

Layout of one checkpoint, `checkpoints/step_00001234/`:
    student.safetensors   student video encoder weights
    teacher.safetensors   EMA teacher weights
    state.safetensors     loss state (the centres)
    optim.pt              optimizer state dict: tensors and numbers only, loads with weights_only=True
    rng.pt                torch / numpy / python RNG states, also weights_only-loadable
    meta.json             step, epoch, resolved config, versions, metrics of the last logged step
`checkpoints/last` holds the name of the newest complete checkpoint.

Atomicity: everything is written into a hidden temp directory, fsynced, then renamed into place,
and only then does `last` move (itself written by temp file + rename). A crash at any moment
leaves either the previous checkpoint or the new one, never a partial one under a real name.
Loading never unpickles arbitrary objects: safetensors, JSON, and `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lss_cli.errors import LssError
from lss_cli.runtime.rundir import write_text_atomic

PREFIX = "step_"


@dataclass
class Checkpoint:
    path: Path
    step: int  # optimizer steps completed
    epoch: int  # epoch the next step belongs to
    meta: dict[str, Any]
    student: dict[str, torch.Tensor]
    teacher: dict[str, torch.Tensor]
    state: dict[str, torch.Tensor]
    optim: dict[str, Any]
    rng: dict[str, Any]


def _plain_state(module_or_state: torch.nn.Module | dict) -> dict[str, torch.Tensor]:
    state = module_or_state.state_dict() if isinstance(module_or_state, torch.nn.Module) else module_or_state
    # safetensors refuses shared storage; contiguous CPU clones are always safe to write.
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_torch(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(ckpt_dir: str | Path, *, step: int, epoch: int, student, teacher, state: dict,
                    optimizer: torch.optim.Optimizer, meta: dict[str, Any], keep_last: int = 3) -> Path:
    """Write checkpoint `step` atomically, move `last` to it, prune to `keep_last`. Rank 0 only."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = f"{PREFIX}{step:08d}"
    final = ckpt_dir / name
    tmp = ckpt_dir / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(_plain_state(student), str(tmp / "student.safetensors"))
    save_file(_plain_state(teacher), str(tmp / "teacher.safetensors"))
    save_file(_plain_state(state), str(tmp / "state.safetensors"))
    _save_torch(optimizer.state_dict(), tmp / "optim.pt")
    _save_torch(rng_state(), tmp / "rng.pt")
    write_text_atomic(tmp / "meta.json", json.dumps({"step": step, "epoch": epoch, **meta}, indent=2, default=str))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. after a resume): replace the old copy
        old = ckpt_dir / f".old-{name}-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old)
    else:
        os.rename(tmp, final)
    _fsync_dir(ckpt_dir)
    write_text_atomic(ckpt_dir / "last", name + "\n")
    _prune(ckpt_dir, keep_last, protect=name)
    return final


def _prune(ckpt_dir: Path, keep_last: int, protect: str) -> None:
    done = sorted(p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith(PREFIX))
    for old in done[:-keep_last]:
        if old.name != protect:
            shutil.rmtree(old, ignore_errors=True)
    for stale in ckpt_dir.glob(".tmp-*"):  # leftovers of a crash mid-save
        shutil.rmtree(stale, ignore_errors=True)


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    ckpt_dir = Path(ckpt_dir)
    pointer = ckpt_dir / "last"
    if not pointer.is_file():
        return None
    path = ckpt_dir / pointer.read_text().strip()
    return path if (path / "meta.json").is_file() else None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint directory (or a run dir / its checkpoints dir, meaning the newest)."""
    path = Path(path)
    for candidate in (path / "checkpoints", path):
        if (candidate / "last").is_file():
            found = latest_checkpoint(candidate)
            if found is None:
                raise LssError(f"{candidate}/last points to a missing checkpoint")
            path = found
            break
    if not (path / "meta.json").is_file():
        raise LssError(f"{path} is not a checkpoint (no meta.json)",
                       hint="pass a run dir, its checkpoints/ dir, or a checkpoints/step_* dir")
    try:
        meta = json.loads((path / "meta.json").read_text())
        dev = str(map_location)
        return Checkpoint(
            path=path, step=int(meta["step"]), epoch=int(meta["epoch"]), meta=meta,
            student=load_file(str(path / "student.safetensors"), device=dev),
            teacher=load_file(str(path / "teacher.safetensors"), device=dev),
            state=load_file(str(path / "state.safetensors"), device=dev),
            optim=torch.load(path / "optim.pt", map_location=map_location, weights_only=True),
            rng=torch.load(path / "rng.pt", map_location="cpu", weights_only=True),
        )
    except (OSError, KeyError, ValueError, RuntimeError, SafetensorError) as e:
        raise LssError(f"checkpoint {path} is unreadable: {e}", hint="resume from an earlier checkpoint") from None

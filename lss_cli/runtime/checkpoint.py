"""Training checkpoints: atomic, resumable to the exact step, and safe to load.

Layout of one checkpoint, `checkpoints/step_00001234/`:
    student.safetensors   student video encoder weights
    teacher.safetensors   EMA teacher weights
    state.safetensors     loss state (the centres)
    optim.pt              optimizer state dict: tensors and numbers only, loads with weights_only=True
    rng.pt                torch / numpy / python RNG states, also weights_only-loadable
    meta.json             step, epoch, resolved config, versions, metrics of the last logged step
`checkpoints/last` holds the name of the newest complete checkpoint. `checkpoints/best/` (only with
`eval.every`, `lss_cli.train.periodic_eval`) is a whole checkpoint of the step whose held-out
evaluation was best so far; its meta.json adds `best` (metric, value, step). It is replaced by a
better one, never pruned, and never resumed from (`--resume` takes the newest `step_*`).

Atomicity: everything is written into a hidden temp directory, fsynced, then renamed into place,
and only then does `last` move (itself written by temp file + rename). A crash at any moment
leaves either the previous checkpoint or the new one, never a partial one under a real name; a
save that fails (a full disk) removes its temp directory and says the previous checkpoint is
intact. Hidden temp files a killed writer left behind are removed by the next save; replacing a
checkpoint of the same name (a step redone after a resume, a new best) renames the old one aside
first, and a writer killed between the two renames has its old copy put back by the next save.

Loading never unpickles arbitrary objects: safetensors, JSON, and `torch.load(weights_only=True)`.
A file that is missing, damaged or was tampered with is a `CheckpointError` naming it, and
`load_newest_intact` (what `--resume` uses) falls back past such checkpoints to an older one.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import pickle
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from lss_cli.errors import LssError
from lss_cli.runtime.outputs import fsync_dir, write_text_atomic
from lss_cli.runtime.tensor_io import save_safetensors

PREFIX = "step_"
BEST = "best"  # the best-evaluated checkpoint's directory name
TEMP_PATTERNS = (".tmp-*", ".old-*", ".*.tmp*")  # a save's temp dir, a replaced step, a temp `last`
T = TypeVar("T")


class CheckpointError(LssError):
    """A checkpoint file is missing, damaged or not plain data: `reason` says which file and why."""

    def __init__(self, message: str, reason: str, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.reason = reason


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


def _save_torch(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(ckpt_dir: str | Path, *, step: int, epoch: int, student, teacher, state: dict,
                    optimizer: torch.optim.Optimizer, meta: dict[str, Any], keep_last: int = 3) -> Path:
    """Write checkpoint `step` atomically, move `last` to it, prune to `keep_last`. Rank 0 only.

    A write that fails (no space left, a quota, a read-only disk) leaves no temp directory behind and
    raises an LssError naming the previous checkpoint, which is untouched."""
    ckpt_dir = Path(ckpt_dir)
    name = f"{PREFIX}{step:08d}"
    final = _save_dir(ckpt_dir, name, lambda: latest_checkpoint(ckpt_dir), step=step, epoch=epoch, student=student,
                      teacher=teacher, state=state, optimizer=optimizer, meta=meta)
    try:
        write_text_atomic(ckpt_dir / "last", name + "\n")
    except OSError as e:
        raise LssError(f"checkpoint {final} was saved, but {ckpt_dir / 'last'} could not be moved to it: {_why(e)}",
                       hint=_save_hint(e) + " (it resumes from the newest intact checkpoint, this one)") from None
    _prune(ckpt_dir, keep_last, protect=name)
    return final


def save_best_checkpoint(ckpt_dir: str | Path, *, step: int, epoch: int, student, teacher, state: dict,
                         optimizer: torch.optim.Optimizer, meta: dict[str, Any]) -> Path:
    """Write `ckpt_dir/best` atomically, replacing the previous best. Rank 0 only.

    A whole checkpoint, so `lss export`, `lss eval --checkpoint` and `load_checkpoint` read it like
    a `step_*` directory; `meta` says why it is the best (`best_meta` reads it back)."""
    ckpt_dir = Path(ckpt_dir)
    previous = ckpt_dir / BEST
    return _save_dir(ckpt_dir, BEST, lambda: previous if (previous / "meta.json").is_file() else None, step=step,
                     epoch=epoch, student=student, teacher=teacher, state=state, optimizer=optimizer, meta=meta)


def best_meta(ckpt_dir: str | Path) -> dict[str, Any] | None:
    """meta.json of `ckpt_dir/best`, or None when there is none or it cannot be read (a later
    best replaces it then)."""
    try:
        return json.loads((Path(ckpt_dir) / BEST / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def _save_dir(ckpt_dir: Path, name: str, previous: Callable[[], Path | None], **files: Any) -> Path:
    """Write checkpoint directory `ckpt_dir/name` atomically (`_write_files` into a temp dir, then
    renamed). A failed write leaves no temp directory and raises an LssError saying that
    `previous()`, the checkpoint a reader falls back to, is intact."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(ckpt_dir)
    before = previous()
    tmp = ckpt_dir / f".tmp-{name}-{os.getpid()}"
    try:
        _write_files(tmp, **files)
        return _move_into_place(tmp, ckpt_dir / name)
    except (OSError, SafetensorError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        kept = f"the previous checkpoint {before} is intact" if before else "no earlier checkpoint exists"
        raise LssError(f"could not save checkpoint {ckpt_dir / name}: {_why(e)}; its partial files were removed "
                       f"and {kept}", hint=_save_hint(e)) from None


def _write_files(tmp: Path, *, step: int, epoch: int, student, teacher, state: dict,
                 optimizer: torch.optim.Optimizer, meta: dict[str, Any]) -> None:
    """Every file of a checkpoint into the (new) directory `tmp`, fsynced."""
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    # save_safetensors: with the umask's mode, like every other file (save_file alone makes 0600).
    save_safetensors(tmp / "student.safetensors", _plain_state(student))
    save_safetensors(tmp / "teacher.safetensors", _plain_state(teacher))
    save_safetensors(tmp / "state.safetensors", _plain_state(state))
    _save_torch(optimizer.state_dict(), tmp / "optim.pt")
    _save_torch(rng_state(), tmp / "rng.pt")
    write_text_atomic(tmp / "meta.json", json.dumps({"step": step, "epoch": epoch, **meta}, indent=2, default=str))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    fsync_dir(tmp)


def _move_into_place(tmp: Path, final: Path) -> Path:
    """Rename the finished `tmp` to `final`; an existing `final` (re-saving the same step after a
    resume) is replaced, and put back if the replacement fails."""
    if not final.exists():
        os.rename(tmp, final)
    else:
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.rename(final, old)
        try:
            os.rename(tmp, final)
        except OSError:
            os.rename(old, final)
            raise
        shutil.rmtree(old)
    fsync_dir(final.parent)
    return final


def _why(e: Exception) -> str:
    return os.strerror(e.errno) if isinstance(e, OSError) and e.errno else str(e)


def _save_hint(e: Exception) -> str:
    full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
    return ("free space on that disk" if full else "check that the run dir is writable") + ", then continue with --resume"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove_stale_temps(ckpt_dir: Path) -> None:
    """Remove hidden temp files and dirs (`.tmp-step_*-<pid>`, `.old-step_*-<pid>`, `.last.tmp-<pid>`)
    that a killed or failed save left: those of this process (its saves run one at a time, so none
    is in progress now) and of processes that no longer exist. An `.old-<name>-<pid>` whose
    `<name>` is missing was renamed aside by a writer killed before its replacement took the
    name: it is put back, not removed."""
    for entry in ckpt_dir.iterdir():
        if not any(fnmatch.fnmatch(entry.name, pattern) for pattern in TEMP_PATTERNS):
            continue
        pid = entry.name.rpartition("-")[2]
        if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue  # a live writer's; a second writer of one run dir is not ours to clean up after
        if entry.name.startswith(".old-") and entry.is_dir() and not entry.is_symlink():
            original = ckpt_dir / entry.name[len(".old-"):].rpartition("-")[0]
            if not original.exists():
                os.rename(entry, original)
                continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _prune(ckpt_dir: Path, keep_last: int, protect: str) -> None:
    done = sorted(p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith(PREFIX))
    for old in done[:-keep_last]:
        if old.name != protect:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    ckpt_dir = Path(ckpt_dir)
    pointer = ckpt_dir / "last"
    if not pointer.is_file():
        return None
    path = ckpt_dir / pointer.read_text().strip()
    return path if (path / "meta.json").is_file() else None


def step_dirs(ckpt_dir: str | Path) -> list[Path]:
    """The `step_*` directories of `ckpt_dir`, newest (highest step) first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir()
             if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]), reverse=True)


def load_newest_intact(ckpt_dir: str | Path, map_location: str | torch.device = "cpu"
                       ) -> tuple[Checkpoint | None, list[tuple[str, str]]]:
    """The newest checkpoint of `ckpt_dir` whose every file loads, and (name, reason) of each newer
    one skipped: damaged or missing files, or a `last` pointer naming a checkpoint that is gone.
    (None, skipped) when none is intact."""
    ckpt_dir = Path(ckpt_dir)
    skipped: list[tuple[str, str]] = []
    pointer = ckpt_dir / "last"
    named = pointer.read_text().strip() if pointer.is_file() else ""
    if named and not (ckpt_dir / named).is_dir():
        skipped.append((named, "named by checkpoints/last but missing"))
    for path in step_dirs(ckpt_dir):
        try:
            return _load_dir(path, map_location), skipped
        except CheckpointError as e:
            skipped.append((path.name, e.reason))
    return None, skipped


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint directory (or a run dir / its checkpoints dir, meaning the one `last` names).
    A damaged checkpoint raises CheckpointError naming the file."""
    path = Path(path)
    for candidate in (path / "checkpoints", path):
        if (candidate / "last").is_file():
            found = latest_checkpoint(candidate)
            if found is None:
                raise LssError(f"{candidate}/last points to a missing checkpoint",
                               hint="pass one of its step_* dirs, or resume the run (--resume uses the newest intact one)")
            path = found
            break
    if not (path / "meta.json").is_file():
        raise LssError(f"{path} is not a checkpoint (no meta.json)",
                       hint="pass a run dir, its checkpoints/ dir, or a checkpoints/step_* dir")
    return _load_dir(path, map_location)


def _load_dir(path: Path, map_location: str | torch.device) -> Checkpoint:
    dev = str(map_location)
    meta = _read(path / "meta.json", lambda f: json.loads(f.read_text()))
    try:
        step, epoch = int(meta["step"]), int(meta["epoch"])
    except (KeyError, TypeError, ValueError):
        raise _damaged(path / "meta.json", "no integer step and epoch") from None
    return Checkpoint(
        path=path, step=step, epoch=epoch, meta=meta,
        student=_read(path / "student.safetensors", lambda f: load_file(str(f), device=dev)),
        teacher=_read(path / "teacher.safetensors", lambda f: load_file(str(f), device=dev)),
        state=_read(path / "state.safetensors", lambda f: load_file(str(f), device=dev)),
        optim=_read(path / "optim.pt", lambda f: torch.load(f, map_location=map_location, weights_only=True)),
        rng=_read(path / "rng.pt", lambda f: torch.load(f, map_location="cpu", weights_only=True)),
    )


def _read(file: Path, load: Callable[[Path], T]) -> T:
    """`load(file)`, with every way a damaged or foreign file fails turned into a CheckpointError."""
    if not file.is_file():
        raise _damaged(file, "missing")
    try:
        return load(file)
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False, i.e. running the file's code: never.
        raise _damaged(file, "not plain tensor data (damaged or tampered with; nothing in it was run)") from None
    except EOFError:
        raise _damaged(file, "empty or cut short") from None
    except Exception as e:  # noqa: BLE001 - parsing foreign bytes fails in any way (IndexError, struct.error ...)
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise _damaged(file, f"cannot be parsed ({type(e).__name__}: {first})" if first else
                       f"cannot be parsed ({type(e).__name__})") from None


def _damaged(file: Path, why: str) -> CheckpointError:
    return CheckpointError(f"checkpoint file {file} is unreadable: {why}", reason=f"{file.name}: {why}",
                           hint="--resume falls back to the newest intact checkpoint; "
                           "or pass an older checkpoints/step_* dir")

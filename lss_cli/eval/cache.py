"""The per-video feature cache on disk: one safetensors file per (model, kind, views, input size).

Entries are keyed by a video's absolute path and stamped with its size and mtime (a changed file
is a miss). Writes are atomic (temp file + os.replace), so a reader never sees half a file.
Several processes may share a cache file (two evals of one model, e.g. UCF101 and HMDB51 in
parallel): every write of the main file holds an exclusive lock on `<file>.lock` and first folds in
what the others wrote since this process last read it, so a save adds to the file, never drops
another process's entries. Under torch.distributed each rank writes its own partial file, folded
in at load and merged into the main file by rank 0 (`lss_cli.eval.features`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load

from lss_cli.runtime.progress import warn
from lss_cli.runtime.tensor_io import save_safetensors

CACHE_VERSION = 1  # bump when the feature computation changes
# A temp file of a killed writer is removed once it is this old (and its pid is gone): see
# `_remove_stale_temp_files`.
STALE_TEMP_S = 3600.0

Row = tuple[torch.Tensor, bool, str]  # one video: ([V, D] cpu float32, ok, error)


def _file_stamp(path: str) -> str:
    try:
        st = os.stat(path)
        return f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        return "missing"


def _signature(path: Path) -> tuple[int, int, int] | None:
    """Identifies one version of a cache file: an os.replace gives the path a new inode and mtime.
    None when there is no file."""
    try:
        return _stat_signature(os.stat(path))
    except FileNotFoundError:
        return None


def _stat_signature(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_ino, st.st_size, st.st_mtime_ns


def _read_version(path: Path) -> tuple[tuple[int, int, int], bytes] | None:
    """The signature and the bytes of the version of `path` there now, both through one descriptor:
    a file another process puts in its place meanwhile is a new inode, which this open does not
    see. None when there is no file."""
    try:
        with open(path, "rb") as f:
            return _stat_signature(os.fstat(f.fileno())), f.read()
    except FileNotFoundError:
        return None


def _parse(data: bytes) -> tuple[list, torch.Tensor, torch.Tensor]:
    """(rows [[video, stamp, error]], feats [n, V, D], ok [n]) of a cache file's bytes. Parsed in
    memory rather than with safe_open, which reads the header through its own open of the path and
    has torch open the path again, by name, for the tensor bytes: a save of another process between
    the two paired one version's rows and offsets with another version's bytes (other videos'
    features, or header text read as floats)."""
    tensors = load(data)  # checks the header: the offsets lie inside the data
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])  # u64 length, then the JSON header
    rows = json.loads((header.get("__metadata__") or {})["rows"])
    feats, ok = tensors["feats"], tensors["ok"]  # [n, V, D], [n]
    if len(rows) != len(feats) or len(rows) != len(ok):
        raise ValueError(f"{len(rows)} rows for {len(feats)} feature rows")
    return rows, feats, ok


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive lock on `<path>.lock` for one read-fold-write of `path` (fcntl.flock: Linux/macOS;
    NFS v4 turns it into a lock on the server). Closing the descriptor releases it, on every way
    out; a process that dies releases it too. The lock file is never removed: removing it while
    another process waits on it would let a third one lock a new file beside them."""
    fd = os.open(path.with_name(f"{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the lock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's; anything else: do not guess, keep the file
        return True
    return True


def _remove_stale_temp_files(path: Path) -> None:
    """Remove the temp files (`.<name>.<random>.tmp-<pid>`, of the main or a partial file) that a writer
    killed mid-save (kill -9, OOM killer, power loss) left behind. A temp file is removed only when
    its pid is not a live process on this machine AND it is older than STALE_TEMP_S: on a shared
    filesystem the writer may run on another host, where the pid says nothing, but no save takes
    an hour, so a file that old belongs to a dead writer. A live pid keeps the file (it may be a
    save in progress here, or an unrelated process that reused the pid: the file then waits for it)."""
    now = time.time()
    for tmp in path.parent.glob(f".{path.stem}.*.tmp-*"):
        pid = tmp.name.rsplit(".tmp-", 1)[1]
        if not pid.isdigit() or _pid_alive(int(pid)):
            continue
        try:
            if now - tmp.stat().st_mtime > STALE_TEMP_S:
                tmp.unlink()
        except FileNotFoundError:  # another process cleaned it up first
            pass


class FeatureCache:
    """One safetensors file per (model, kind, views, input size): feats [n, V, D], ok [n], and in
    the metadata the paths, file stamps and errors. Rewritten atomically on every save, under a
    lock, merged with what other processes wrote to it meanwhile (module docstring).

    Beside it, `features-<digest>.rank<r>.partial.safetensors` (same format) hold what rank r of
    an interrupted torch.distributed run had finished; they are folded in at load (`partials`
    lists them) until `merge_partials` writes them into the main file."""

    def __init__(self, cache_dir: str | Path, key: dict[str, Any]):
        digest = hashlib.sha256(json.dumps({**key, "v": CACHE_VERSION}, sort_keys=True).encode()).hexdigest()[:24]
        self.path = Path(cache_dir) / f"features-{digest}.safetensors"
        self.key = key
        self.entries: dict[str, tuple[str, torch.Tensor, bool, str]] = {}  # path -> (stamp, [V, D], ok, error)
        self.fresh: set[str] = set()  # paths added since load: what this process computed
        # Cache file -> the version of it whose entries this object holds (read or written by it):
        # a save re-reads a file only when another process has replaced it since.
        self._seen: dict[Path, tuple[int, int, int] | None] = {}
        _remove_stale_temp_files(self.path)
        self._read(self.path)
        self.partials = self._partial_files()
        for partial in self.partials:  # newer than the main file: they win
            self._read(partial)

    def _partial_files(self) -> list[Path]:
        return sorted(self.path.parent.glob(f"{self.path.stem}.rank*.partial.safetensors"))

    def _load(self, path: Path) -> tuple[list, torch.Tensor, torch.Tensor] | None:
        """(rows [[video, stamp, error]], feats [n, V, D], ok [n]) of a cache file; None when it is
        missing or damaged (with a warning: it is replaced on save), never fatal. Remembers the
        version read, so a save reads the file again only once another process has replaced it.
        The read at open takes no lock (it does not wait for another process's save): one open
        descriptor keeps the whole read on one version of the file (`_read_version`)."""
        try:
            version = _read_version(path)
            self._seen[path] = None if version is None else version[0]
            if version is None:
                return None
            return _parse(version[1])
        except Exception as e:  # noqa: BLE001 - any damage means: recompute
            warn(f"ignoring the unreadable feature cache {path} ({type(e).__name__}: {e}); it will be rebuilt")
            return None

    def _read(self, path: Path) -> None:
        """Load every entry of `path`, replacing those held."""
        loaded = self._load(path)
        if loaded is None:
            return
        rows, feats, ok = loaded
        for i, (video, stamp, error) in enumerate(rows):
            self.entries[video] = (stamp, feats[i], bool(ok[i]), error)

    def _fold(self, path: Path) -> int:
        """Take the entries of `path` (written by another process) that this cache lacks, or holds
        with another stamp while theirs matches the video file as it is now; where both match (or
        neither does), the entry held wins. Skipped when `path` is the version last seen. Returns
        how many entries were taken."""
        if _signature(path) == self._seen.get(path, False):
            return 0
        loaded = self._load(path)
        if loaded is None:
            return 0
        rows, feats, ok = loaded
        take = [i for i, (video, stamp, _) in enumerate(rows)
                if video not in self.entries or (stamp != self.entries[video][0] and stamp == _file_stamp(video))]
        if take:
            kept = feats[take]  # [k, V, D], a copy: the file's other rows are freed, not held by views
            for j, i in enumerate(take):
                video, stamp, error = rows[i]
                self.entries[video] = (stamp, kept[j], bool(ok[i]), error)
        return len(take)

    def lookup(self, path: str) -> Row | None:
        hit = self.entries.get(path)
        if hit is None or hit[0] != _file_stamp(path):
            return None
        return hit[1], hit[2], hit[3]

    def add(self, path: str, feat: torch.Tensor, ok: bool, error: str) -> None:
        if not ok and "did not finish within" in error:
            return  # a decode timeout may be transient (a slow mount): try that file again next time
        self.entries[path] = (_file_stamp(path), feat, ok, error)
        self.fresh.add(path)

    def save(self) -> None:
        """Write every entry to the main file, with those other processes saved there meanwhile."""
        self._merge_into_main([])

    def partial_path(self, rank: int) -> Path:
        return self.path.with_name(f"{self.path.stem}.rank{rank}.partial.safetensors")

    def save_partial(self, rank: int) -> None:
        """Write what this process computed to rank `rank`'s partial file (no other rank writes it,
        so no lock)."""
        self._write(self.partial_path(rank), sorted(self.fresh))

    def merge_partials(self) -> None:
        """Main file := its entries, everything loaded and added, and the partial files as they are
        now; then the partial files go (rank 0 only, when no other rank of its run writes)."""
        self._merge_into_main(self._partial_files(), remove=True)
        self.partials = []

    def _merge_into_main(self, sources: Iterable[Path], remove: bool = False) -> None:
        """Under the lock: fold in the main file and `sources` as they are on disk now, write the
        main file, and (`remove`) unlink `sources`, whose entries it holds by then."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(self.path):
            sources = list(sources)
            for path in [self.path, *sources]:
                self._fold(path)
            self._write(self.path, list(self.entries))
            if remove:
                for path in sources:
                    path.unlink(missing_ok=True)

    def _write(self, path: Path, videos: list[str]) -> None:
        """Atomically: a reader sees the old file or the new one, never a part of it."""
        if not videos:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        feats = torch.stack([self.entries[p][1] for p in videos]).contiguous()  # [n, V, D]
        ok = torch.tensor([self.entries[p][2] for p in videos])
        rows = [[p, self.entries[p][0], self.entries[p][3]] for p in videos]
        save_safetensors(path, {"feats": feats, "ok": ok}, metadata={"rows": json.dumps(rows), "key": json.dumps(self.key)})
        # No other process replaces `path` meanwhile: the main file is written under the lock, a
        # partial file by its rank alone.
        self._seen[path] = _signature(path)

"""Processes sharing one feature cache file (two evals of the same model in parallel): a save merges
what the others saved into the file instead of replacing it, under a lock; stale temp files of
killed writers are removed when a cache is opened, live or recent ones are kept."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import lss_cli.runtime.tensor_io as tensor_io
from lss_cli.eval.cache import STALE_TEMP_S, FeatureCache

KEY = {"model": "m" * 16, "kind": "proj", "views": {"num_frames": 2, "num_clips": 1, "num_crops": 1},
       "image_size": 64}


def _feat(value: float) -> torch.Tensor:
    return torch.full((1, 4), value)  # [V, D]


def _on_disk(cache: FeatureCache) -> dict[str, float]:
    """The main file's entries as video -> the first feature value (identifies who wrote it)."""
    with safe_open(str(cache.path), framework="pt") as f:
        rows = json.loads(f.metadata()["rows"])
        feats = f.get_tensor("feats")  # [n, V, D]
    return {video: float(feats[i, 0, 0]) for i, (video, _, _) in enumerate(rows)}


def test_interleaved_saves_of_two_caches_keep_the_union(tmp_path):
    a, b = FeatureCache(tmp_path, KEY), FeatureCache(tmp_path, KEY)
    a.add("/v/a1.mp4", _feat(1), True, "")
    b.add("/v/b1.mp4", _feat(2), True, "")
    b.add("/v/bad.mp4", _feat(0), False, "no video stream")
    a.save()
    b.save()  # b never read a1: it must not drop it
    assert _on_disk(a) == {"/v/a1.mp4": 1.0, "/v/b1.mp4": 2.0, "/v/bad.mp4": 0.0}
    a.add("/v/a2.mp4", _feat(3), True, "")
    a.save()
    b.add("/v/b2.mp4", _feat(4), True, "")
    b.save()
    assert _on_disk(a) == {"/v/a1.mp4": 1.0, "/v/b1.mp4": 2.0, "/v/bad.mp4": 0.0, "/v/a2.mp4": 3.0, "/v/b2.mp4": 4.0}
    # What a save folded in is usable at once, with its ok flag and error, and so is a fresh open.
    assert b.lookup("/v/a2.mp4") is not None and a.entries["/v/bad.mp4"][2:] == (False, "no video stream")
    assert set(FeatureCache(tmp_path, KEY).entries) == set(_on_disk(a))
    assert a.fresh == {"/v/a1.mp4", "/v/a2.mp4"}  # folded entries are not this process's work


def test_same_video_the_entry_matching_the_file_now_wins(tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"old")
    old = FeatureCache(tmp_path, KEY)
    old.add(str(video), _feat(1), True, "")  # stamped with the old file
    video.write_bytes(b"new contents")  # the file changes (size and mtime)
    new = FeatureCache(tmp_path, KEY)
    new.add(str(video), _feat(2), True, "")
    new.save()
    old.save()  # holds a stale entry in memory: the disk's matches the file now
    assert _on_disk(old) == {str(video): 2.0}
    assert old.lookup(str(video))[0][0, 0] == 2.0
    # Both match the file: the entry held in memory wins.
    again = FeatureCache(tmp_path, KEY)
    again.add(str(video), _feat(3), True, "")
    new.save()  # another version of the file, with the same stamp as `again`'s entry
    again.save()
    assert _on_disk(again) == {str(video): 3.0}


def test_a_save_rereads_the_file_only_when_another_process_replaced_it(tmp_path, monkeypatch):
    a, b = FeatureCache(tmp_path, KEY), FeatureCache(tmp_path, KEY)
    a.add("/v/a1.mp4", _feat(1), True, "")
    a.save()
    loads: list[Path] = []
    real = FeatureCache._load
    monkeypatch.setattr(FeatureCache, "_load", lambda self, path: (loads.append(path), real(self, path))[1])
    a.add("/v/a2.mp4", _feat(2), True, "")
    a.save()
    assert loads == []  # the file on disk is the one `a` wrote: nothing to fold in
    b.add("/v/b1.mp4", _feat(3), True, "")
    b.save()
    assert loads == [b.path]
    a.save()
    assert loads == [b.path, a.path]


def test_the_lock_is_held_while_saving_and_released_on_failure(tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path, KEY)
    cache.add("/v/a1.mp4", _feat(1), True, "")
    lock = cache.path.with_name(cache.path.name + ".lock")
    held: list[bool] = []

    def failing_save_file(*a, **k):
        with open(lock) as f:  # another open file description: flock conflicts even in-process
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(False)
            except BlockingIOError:
                held.append(True)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tensor_io, "save_file", failing_save_file)  # the cache writes through save_safetensors
    with pytest.raises(OSError, match="No space"):
        cache.save()
    assert held == [True]
    with open(lock) as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released despite the failure
    assert lock.exists() and not list(tmp_path.glob(".*tmp*"))


def test_merging_partial_files_keeps_what_another_process_saved(tmp_path):
    rank0 = FeatureCache(tmp_path, KEY)  # a torchrun job's rank 0 and rank 1, and a parallel eval
    rank1 = FeatureCache(tmp_path, KEY)
    other = FeatureCache(tmp_path, KEY)
    rank0.add("/v/r0.mp4", _feat(1), True, "")
    rank1.add("/v/r1.mp4", _feat(2), True, "")
    rank0.save_partial(0)
    rank1.save_partial(1)
    other.add("/v/o.mp4", _feat(3), True, "")
    other.save()
    rank0.merge_partials()  # after the run: rank 1's partial file as it is now, and `other`'s save
    assert _on_disk(rank0) == {"/v/r0.mp4": 1.0, "/v/r1.mp4": 2.0, "/v/o.mp4": 3.0}
    assert not list(tmp_path.glob("*.partial.*"))


# ---- real processes saving concurrently --------------------------------------------------------

# Each round opens the cache afresh (an eval starting while the others save: that first read takes
# no lock), checks every entry it read, adds `per_round` entries of its own and saves; starts when
# `go` exists, so the processes save at the same time. Every value names its video (`_VALUE`), so an
# entry read from another version of the file, or from another row, is caught where it is read.
_VALUE = """
def value(video):  # /v/<name>-<round>-<j>.mp4 -> a number no other video has
    name, r, j = video[3:-4].split("-")
    return float(ord(name) * 10000 + int(r) * 100 + int(j) + 1)
"""
_WRITER = _VALUE + """
import os, sys, time, json
from pathlib import Path
import torch
from lss_cli.eval.cache import FeatureCache
cache_dir, name, rounds, per_round, key = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5])
Path(cache_dir, "ready-" + name).touch()
while not Path(cache_dir, "go").exists():
    time.sleep(0.005)
for r in range(rounds):
    cache = FeatureCache(cache_dir, key)
    wrong = {v: e[1].unique().tolist() for v, e in cache.entries.items() if not bool((e[1] == value(v)).all())}
    assert not wrong, f"round {r} read {len(wrong)} wrong entries of {len(cache.entries)}: {sorted(wrong.items())[:5]}"
    for j in range(per_round):
        video = f"/v/{name}-{r}-{j}.mp4"
        cache.add(video, torch.full((3, 256), value(video)), True, "")
    cache.save()
"""


def test_processes_saving_concurrently_keep_every_entry_exactly(tmp_path):
    names, rounds, per_round = "abc", 40, 3
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), name, str(rounds), str(per_round),
                               json.dumps(KEY)], env=env, stderr=subprocess.PIPE, text=True) for name in names]
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"ready-{n}").exists() for n in names) and time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), [p.communicate()[1] for p in procs]
            time.sleep(0.01)
        (tmp_path / "go").touch()
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0] * len(procs), "\n".join(e[-2000:] for e in errors)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    namespace: dict = {}
    exec(_VALUE, namespace)
    with safe_open(str(FeatureCache(tmp_path, KEY).path), framework="pt") as f:
        rows = json.loads(f.metadata()["rows"])
        feats = f.get_tensor("feats")  # [n, V, D]
    got = {video: feats[i].unique().tolist() for i, (video, _, _) in enumerate(rows)}  # every element, not one
    want = {f"/v/{n}-{r}-{j}.mp4": [namespace["value"](f"/v/{n}-{r}-{j}.mp4")]
            for n in names for r in range(rounds) for j in range(per_round)}
    assert got == want


# ---- stale temp files ------------------------------------------------------------------------


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temp_files_are_removed_on_open_live_or_recent_ones_kept(tmp_path):
    cache = FeatureCache(tmp_path, KEY)
    main, partial, partial2 = cache.path, cache.partial_path(1), cache.partial_path(2)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = _dead_pid()
        old = time.time() - STALE_TEMP_S - 60
        stale = [tmp_path / f".{main.name}.tmp-{dead}", tmp_path / f".{partial.name}.tmp-{dead}"]
        kept_old = [tmp_path / f".{main.name}.tmp-{live.pid}", tmp_path / f".{main.name}.tmp-{os.getpid()}"]
        recent = tmp_path / f".{partial2.name}.tmp-{dead}"  # dead, but a minute old
        lock = tmp_path / f"{main.name}.lock"
        other_key = tmp_path / f".features-{'0' * 24}.safetensors.tmp-{dead}"  # another cache's
        for f in [*stale, *kept_old, recent, lock, other_key]:
            f.write_bytes(b"")
        for f in [*stale, *kept_old, lock, other_key]:
            os.utime(f, (old, old))
        os.utime(recent, (time.time() - 60, time.time() - 60))
        assert not _pid_is_live(dead) and _pid_is_live(live.pid)
        FeatureCache(tmp_path, KEY)
        assert not any(f.exists() for f in stale)
        assert all(f.exists() for f in [*kept_old, recent, lock, other_key])
    finally:
        live.kill()
        live.wait()


def _pid_is_live(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True

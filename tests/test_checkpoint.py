"""Checkpoints: atomic layout, exact round trip, weights_only loading, pruning, torn and failed
saves, damaged files, and the fallback to the newest intact checkpoint."""

from __future__ import annotations

import datetime
import errno
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from lss_cli.errors import LssError
from lss_cli.runtime import checkpoint
from lss_cli.runtime.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, set_rng_state


def _setup():
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    teacher = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    student(torch.randn(2, 4)).sum().backward()
    opt.step()
    return student, teacher, opt


def test_round_trip_and_rng(tmp_path):
    student, teacher, opt = _setup()
    state = {"center_category": torch.randn(1, 5)}
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    path = save_checkpoint(tmp_path, step=7, epoch=1, student=student, teacher=teacher, state=state,
                           optimizer=opt, meta={"config": {"a": 1}})
    expected = (random.random(), np.random.rand(), torch.rand(1))
    ck = load_checkpoint(tmp_path)
    assert ck.path == path and ck.step == 7 and ck.epoch == 1 and ck.meta["config"] == {"a": 1}
    for k, v in student.state_dict().items():
        assert torch.equal(ck.student[k], v)
    assert torch.equal(ck.state["center_category"], state["center_category"])
    opt2 = torch.optim.AdamW(student.parameters(), lr=1e-3)
    opt2.load_state_dict(ck.optim)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    set_rng_state(ck.rng)
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])


def test_files_load_without_unpickling(tmp_path):
    student, teacher, opt = _setup()
    path = save_checkpoint(tmp_path, step=1, epoch=0, student=student, teacher=teacher, state={},
                           optimizer=opt, meta={})
    for name in ("optim.pt", "rng.pt"):
        torch.load(path / name, weights_only=True)  # raises if anything but plain data is inside
    json.loads((path / "meta.json").read_text())


def test_files_have_the_umask_mode(tmp_path):
    path = _save(tmp_path, 1)
    (tmp_path / "plain").write_text("")
    expected = (tmp_path / "plain").stat().st_mode & 0o777
    assert {f.name: f.stat().st_mode & 0o777 for f in path.iterdir()} == {f.name: expected for f in path.iterdir()}


def test_pruning_and_last_pointer(tmp_path):
    student, teacher, opt = _setup()
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step=step, epoch=0, student=student, teacher=teacher, state={},
                        optimizer=opt, meta={}, keep_last=2)
    names = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert names == ["step_00000003", "step_00000004"]
    assert latest_checkpoint(tmp_path).name == "step_00000004"


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _save(path, step: int, **kw):
    student, teacher, opt = _setup()
    return save_checkpoint(path, step=step, epoch=0, student=student, teacher=teacher, state={}, optimizer=opt,
                           meta={}, **kw)


def test_leftover_temp_dir_is_ignored_and_cleaned(tmp_path):
    student, teacher, opt = _setup()
    save_checkpoint(tmp_path, step=1, epoch=0, student=student, teacher=teacher, state={}, optimizer=opt, meta={})
    torn = tmp_path / f".tmp-step_00000002-{_dead_pid()}"
    torn.mkdir()
    (torn / "student.safetensors").write_bytes(b"partial")
    assert load_checkpoint(tmp_path).step == 1  # a crash mid-save never becomes "last"
    save_checkpoint(tmp_path, step=2, epoch=0, student=student, teacher=teacher, state={}, optimizer=opt, meta={})
    assert not torn.exists()


def test_unreadable_checkpoint_errors(tmp_path):
    with pytest.raises(LssError, match="not a checkpoint"):
        load_checkpoint(tmp_path)
    student, teacher, opt = _setup()
    path = save_checkpoint(tmp_path, step=1, epoch=0, student=student, teacher=teacher, state={}, optimizer=opt, meta={})
    (path / "teacher.safetensors").write_bytes(b"garbage")
    with pytest.raises(LssError, match="unreadable"):
        load_checkpoint(path)


def test_stale_temp_files_of_a_dead_writer_are_cleaned(tmp_path):
    """A save killed while writing `last` leaves `.last.tmp-<pid>`; the next save removes it (and a
    dead writer's temp dir), but not the temp file of a writer that is still alive."""
    _save(tmp_path, 1)
    dead = _dead_pid()
    stale_last = tmp_path / f".last.tmp-{dead}"
    stale_last.write_text("step_00000002")
    stale_old = tmp_path / f".old-step_00000001-{dead}"
    stale_old.mkdir()
    live = tmp_path / f".last.tmp-{os.getppid()}"  # the pytest runner's parent: alive
    live.write_text("step_00000003")
    _save(tmp_path, 2)
    assert not stale_last.exists() and not stale_old.exists()
    assert live.exists()
    assert latest_checkpoint(tmp_path).name == "step_00000002"


@pytest.mark.parametrize("writer", ["save_safetensors", "_save_torch"])
def test_full_disk_removes_the_partial_checkpoint_and_keeps_the_previous(tmp_path, monkeypatch, writer):
    previous = _save(tmp_path, 1)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint, writer, no_space)
    with pytest.raises(LssError) as e:
        _save(tmp_path, 2)
    assert "No space left on device" in e.value.message and f"{previous} is intact" in e.value.message
    assert "--resume" in e.value.hint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last", "step_00000001"]  # no partial temp dir
    assert load_checkpoint(tmp_path).step == 1


@pytest.mark.parametrize(("name", "damage"), [
    ("optim.pt", lambda f: torch.save({"state": {}, "param_groups": [], "x": datetime.datetime(2020, 1, 1)}, f)),
    ("optim.pt", lambda f: f.write_bytes(b"garbage, not a torch file")),
    ("rng.pt", lambda f: f.write_bytes(b"")),
    ("student.safetensors", lambda f: f.write_bytes(f.read_bytes()[:40])),
    ("meta.json", lambda f: f.write_text("{not json")),
    ("teacher.safetensors", lambda f: f.unlink()),
], ids=["tampered-optim", "garbage-optim", "empty-rng", "truncated-student", "bad-meta", "missing-teacher"])
def test_a_damaged_file_is_named(tmp_path, name, damage):
    path = _save(tmp_path, 1)
    damage(path / name)
    with pytest.raises(LssError) as e:  # never a raw UnpicklingError / EOFError
        load_checkpoint(path)
    assert f"checkpoint file {path / name} is unreadable" in e.value.message
    assert isinstance(e.value, checkpoint.CheckpointError) and e.value.reason.startswith(name)  # --resume's warning


def test_newest_intact_checkpoint_is_chosen(tmp_path):
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, keep_last=4)
    (tmp_path / "step_00000003" / "optim.pt").write_bytes(b"tampered")
    ck, skipped = checkpoint.load_newest_intact(tmp_path)  # `last` names step 4: intact
    assert ck.step == 4 and skipped == []
    (tmp_path / "step_00000004" / "rng.pt").unlink()
    ck, skipped = checkpoint.load_newest_intact(tmp_path)
    assert ck.step == 2
    assert [name for name, _ in skipped] == ["step_00000004", "step_00000003"]
    assert skipped[0][1].startswith("rng.pt: missing") and skipped[1][1].startswith("optim.pt:")
    for step in (1, 2):
        (tmp_path / f"step_0000000{step}" / "meta.json").write_text("[]")
    ck, skipped = checkpoint.load_newest_intact(tmp_path)
    assert ck is None and len(skipped) == 4

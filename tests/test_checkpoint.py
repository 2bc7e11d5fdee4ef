"""Checkpoints: atomic layout, exact round trip, weights_only loading, pruning, torn saves."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from lss_cli.errors import LssError
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


def test_pruning_and_last_pointer(tmp_path):
    student, teacher, opt = _setup()
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step=step, epoch=0, student=student, teacher=teacher, state={},
                        optimizer=opt, meta={}, keep_last=2)
    names = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert names == ["step_00000003", "step_00000004"]
    assert latest_checkpoint(tmp_path).name == "step_00000004"


def test_leftover_temp_dir_is_ignored_and_cleaned(tmp_path):
    student, teacher, opt = _setup()
    save_checkpoint(tmp_path, step=1, epoch=0, student=student, teacher=teacher, state={}, optimizer=opt, meta={})
    torn = tmp_path / ".tmp-step_00000002-999"
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

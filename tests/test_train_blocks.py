"""Training building blocks: EMA update, schedules, centres across ranks, one full CPU step."""

from __future__ import annotations

import copy
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lss_cli.config import LossConfig, ModelConfig, OptimConfig, TeacherConfig
from lss_cli.models.video import build_video_encoder
from lss_cli.train.ema import ema_update
from lss_cli.train.losses import LSSLoss
from lss_cli.train.schedules import build_schedules, cosine_schedule, warmup_constant_schedule

# ---- EMA ------------------------------------------------------------------------------------


@pytest.mark.parametrize("momentum", [0.75, torch.tensor(0.75)])
def test_ema_update_by_hand(momentum):
    teacher, student = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        teacher.weight.copy_(torch.tensor([[1.0, 2.0]]))
        teacher.bias.fill_(4.0)
        student.weight.copy_(torch.tensor([[5.0, -2.0]]))
        student.bias.fill_(0.0)
    ema_update(teacher, student, momentum)
    # 0.75 * t + 0.25 * s
    torch.testing.assert_close(teacher.weight, torch.tensor([[2.0, 1.0]]))
    torch.testing.assert_close(teacher.bias, torch.tensor([3.0]))
    torch.testing.assert_close(student.weight, torch.tensor([[5.0, -2.0]]))  # student untouched
    assert teacher.weight.grad is None


def test_ema_momentum_one_freezes_and_zero_copies():
    teacher, student = nn.Linear(3, 2), nn.Linear(3, 2)
    before = copy.deepcopy(teacher.state_dict())
    ema_update(teacher, student, 1.0)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    ema_update(teacher, student, 0.0)
    assert all(torch.equal(student.state_dict()[k], v) for k, v in teacher.state_dict().items())


def test_ema_looks_through_wrappers_and_checks_names():
    teacher, student = nn.Linear(2, 2), nn.Linear(2, 2)
    wrapped = nn.Module()
    wrapped.module = student  # the shape of a DDP wrapper
    ema_update(teacher, wrapped, 0.0)
    torch.testing.assert_close(teacher.weight, student.weight)
    with pytest.raises(ValueError, match="parameters differ"):
        ema_update(teacher, nn.Linear(2, 2, bias=False), 0.5)


# ---- schedules ------------------------------------------------------------------------------


def test_cosine_schedule_warmup_and_endpoints():
    s = cosine_schedule(1.0, 0.1, total_iters=10, warmup_iters=4, warmup_start=0.2)
    assert s.shape == (10,) and s.dtype == np.float64
    np.testing.assert_allclose(s[:4], [0.2, 0.4, 0.6, 0.8])  # linear, end excluded
    assert s[4] == pytest.approx(1.0) and s[-1] == pytest.approx(0.1)
    assert np.all(np.diff(s[4:]) < 0)  # cosine decay
    mid = 4 + (10 - 4 - 1) / 2  # halfway through the cosine: the mean of base and final
    assert np.interp(mid, np.arange(10), s) == pytest.approx(0.55, abs=0.02)
    assert cosine_schedule(0.996, 1.0, 5)[0] == pytest.approx(0.996)
    assert cosine_schedule(0.996, 1.0, 5)[-1] == 1.0
    with pytest.raises(ValueError):
        cosine_schedule(1.0, 0.0, total_iters=3, warmup_iters=4)


def test_warmup_constant_schedule():
    s = warmup_constant_schedule(0.04, 0.07, total_iters=6, warmup_iters=3)
    np.testing.assert_allclose(s, [0.04, 0.05, 0.06, 0.07, 0.07, 0.07])
    np.testing.assert_allclose(warmup_constant_schedule(0.04, 0.07, 3, 0), [0.07] * 3)


def test_build_schedules_from_config():
    optim = OptimConfig(epochs=2, lr=1e-5, temporal_lr=1e-4, min_lr=1e-7, warmup_epochs=0.5,
                        weight_decay=0.04, weight_decay_end=0.1)
    loss = LossConfig(warmup_teacher_temp=0.002, teacher_temp=0.004, warmup_teacher_temp_epochs=1)
    s = build_schedules(optim, TeacherConfig(), loss, iters_per_epoch=10, lr_scale=2.0)
    assert len(s) == 20
    assert s.lr[0] == 0.0 and s.lr[5] == pytest.approx(2e-5) and s.lr[-1] == pytest.approx(2e-7)
    assert s.temporal_lr[5] == pytest.approx(2e-4)
    assert s.weight_decay[0] == pytest.approx(0.04) and s.weight_decay[-1] == pytest.approx(0.1)
    assert s.teacher_momentum[0] == pytest.approx(0.996) and s.teacher_momentum[-1] == 1.0
    assert s.teacher_temp[0] == pytest.approx(0.002) and s.teacher_temp[10:].tolist() == [0.004] * 10

    params = [nn.Parameter(torch.zeros(2, 2)) for _ in range(3)]
    opt = torch.optim.AdamW([
        {"params": [params[0]], "group": "pretrained", "apply_weight_decay": True},
        {"params": [params[1]], "group": "pretrained", "apply_weight_decay": False},
        {"params": [params[2]], "group": "temporal", "apply_weight_decay": True}])
    s.apply(opt, 7)
    lrs = [g["lr"] for g in opt.param_groups]
    wds = [g["weight_decay"] for g in opt.param_groups]
    assert lrs == [s.lr[7], s.lr[7], s.temporal_lr[7]] and all(type(x) is float for x in lrs)
    assert wds == [s.weight_decay[7], 0.0, s.weight_decay[7]]


# ---- centres across ranks ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _centre_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cat, desc = torch.eye(5)[:2], torch.eye(5)[2:]
        loss_fn = LSSLoss(cat, desc, torch.tensor([0, 1, 1]), center_momentum=0.5, center_init="zero")
        teacher = torch.full((1, 2, 5), float(rank + 1))  # rank 0 scores 1, rank 1 scores 2
        loss_fn(torch.zeros(2, 2, 5), teacher, 0.1, 0.05)
        torch.save({"cat": loss_fn.center_category, "desc": loss_fn.center_description}, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_centres_are_all_reduced_across_ranks(tmp_path):
    """2 gloo processes: both centres become 0.5 * 0 + 0.5 * mean(1, 2) = 0.75 everywhere."""
    torch.multiprocessing.start_processes(_centre_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2,
                                          start_method="spawn")
    for rank in (0, 1):
        c = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        torch.testing.assert_close(c["cat"], torch.full((2,), 0.75))
        torch.testing.assert_close(c["desc"], torch.full((3,), 0.75))


# ---- one full step -------------------------------------------------------------------------


def test_end_to_end_step_on_cpu(tiny_clip):
    """Student on 2 global + 2 local views, teacher on globals, loss, backward, AdamW, EMA."""
    torch.manual_seed(0)
    student = build_video_encoder(tiny_clip, ModelConfig(name="lss-tiny", temporal="divided", num_frames=2))
    teacher = copy.deepcopy(student).requires_grad_(False).eval()
    b, t = 2, 2
    globals_ = [torch.randn(b, t, 3, 64, 64) for _ in range(2)]
    locals_ = [torch.randn(b, t, 3, 32, 32) for _ in range(2)]
    bank_cat = F.normalize(torch.randn(6, 64), dim=-1)
    bank_desc = F.normalize(torch.randn(9, 64), dim=-1)
    owner = torch.tensor([0, 0, 1, 2, 3, 3, 4, -1, -1])  # category 5 is an extra word
    loss_fn = LSSLoss(bank_cat, bank_desc, owner, w_u=0.1)
    cfg = OptimConfig()
    opt = torch.optim.AdamW(student.param_groups(cfg.lr, cfg.temporal_lr, cfg.weight_decay), betas=cfg.betas)

    with torch.no_grad():
        teacher_z = torch.stack([teacher(v) for v in globals_])  # [V_g, B, D]
    student_z = torch.cat([student(torch.cat(globals_)).view(2, b, -1),  # one call per resolution
                           student(torch.cat(locals_)).view(2, b, -1)])  # [V_s, B, D]
    loss, parts = loss_fn(student_z, teacher_z, 0.01, torch.tensor(0.004))
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in parts.values())
    loss.backward()
    assert all(p.grad is not None for p in student.parameters())
    assert student.temporal_blocks[0].proj.weight.grad.abs().sum() > 0  # the zero-init layer learns
    assert all(p.grad is None for p in teacher.parameters())

    before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    opt.step()
    ema_update(teacher, student, torch.tensor(0.996))
    s_params = dict(student.named_parameters())
    for name, p in teacher.named_parameters():
        torch.testing.assert_close(p, 0.996 * before[name] + 0.004 * s_params[name].detach())
    assert s_params["temporal_blocks.0.proj.weight"].abs().sum() > 0  # AdamW moved the zero-init layer
    assert loss_fn.center_category.abs().sum() > 0  # the centre moved
    assert not torch.distributed.is_initialized()  # no process group was needed

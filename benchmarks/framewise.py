"""The frame-wise baseline: open_clip's image tower on every frame, the video embedding the mean
over frames (no temporal modelling), and its multi-view self-distillation step.

The step is written the way peer code writes it (eager, one tower per input resolution sharing
the weights; teacher on the global views, student on all; the same loss, AdamW and EMA as ours),
so benchmarks/train_step.py can time our step against it; eval_forward.py compares our encoder's
forward with `FramewiseClip`'s.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from lss_cli.config import TrainConfig
from lss_cli.models.clip import load_clip
from lss_cli.models.video import split_decay
from lss_cli.runtime.compile import maybe_compile
from lss_cli.train.ema import ema_update
from lss_cli.train.losses import LSSLoss
from lss_cli.train.schedules import Schedules, build_schedules

if TYPE_CHECKING:
    from train_step_setup import Setup

SCHEDULE_ITERS = 100_000  # longer than any benchmark: the schedules are only indexed


def share_parameters(dst: nn.Module, src: nn.Module) -> None:
    """Make every parameter of `dst` that has a same-shaped twin in `src` that very tensor."""
    for name, module in dst.named_modules():
        twin = src.get_submodule(name)
        for p_name, p in list(module._parameters.items()):
            q = twin._parameters.get(p_name)
            if p is not None and q is not None and q.shape == p.shape:
                module._parameters[p_name] = q


class FramewiseClip(nn.Module):
    """open_clip image towers per frame, one per input size (weights shared); video = mean over frames."""

    def __init__(self, towers: dict[int, nn.Module]):
        super().__init__()
        self.towers = nn.ModuleDict({str(size): tower for size, tower in towers.items()})

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """video [N, T, 3, S, S] -> z [N, D], L2-normalised mean of the per-frame embeddings."""
        n, t = video.shape[:2]
        feats = self.towers[str(video.shape[-1])](video.flatten(0, 1))  # [N*T, D]
        return F.normalize(feats.view(n, t, -1).mean(dim=1), dim=-1)


@dataclass
class Baseline:
    student: FramewiseClip
    teacher: FramewiseClip
    loss_fn: LSSLoss
    optimizer: torch.optim.Optimizer
    schedules: Schedules
    cfg: TrainConfig
    student_fwd: Callable[[torch.Tensor], torch.Tensor]
    teacher_fwd: Callable[[torch.Tensor], torch.Tensor]


def build_baseline(s: Setup, device: torch.device, compiled: bool = False, optimizer: str = "adamw") -> Baseline:
    """The baseline's towers from the benchmark's CLIP, its loss from the same bank as ours.

    `optimizer="sgd"` is for FLOP counting on meta tensors (AdamW reads its step count on the host)."""
    a = s.args
    big = copy.deepcopy(s.clip.model.visual).float()
    small = load_clip(a.model, None, seed=a.seed, image_size=a.local_size).model.visual.float()
    share_parameters(small, big)  # only the position embedding is the small tower's own
    student = FramewiseClip({a.global_size: big, a.local_size: small}).to(device).train().requires_grad_(True)
    teacher = FramewiseClip({a.global_size: copy.deepcopy(big)}).to(device).eval().requires_grad_(False)
    decay, no_decay = split_decay(list(student.named_parameters()))
    groups = [{"params": decay, "weight_decay": s.cfg.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = (torch.optim.AdamW(groups, lr=s.cfg.optim.lr, betas=s.cfg.optim.betas, fused=device.type == "cuda")
           if optimizer == "adamw" else torch.optim.SGD(groups, lr=0.0))
    schedules = build_schedules(s.cfg.optim, s.cfg.teacher, s.cfg.loss, SCHEDULE_ITERS, lr_scale=a.batch / 256)
    loss_fn = LSSLoss.from_config(s.bank, s.cfg.loss).to(device)
    kw = {"backend": a.backend}
    return Baseline(student, teacher, loss_fn, opt, schedules, s.cfg,
                    maybe_compile(student, "baseline student", compiled, **kw),
                    maybe_compile(teacher, "baseline teacher", compiled, **kw))


def _autocast(dtype: torch.dtype | None, device: torch.device) -> AbstractContextManager[Any]:
    """Autocast to `dtype` (None: float32) on `device`; none on meta tensors, where it means nothing."""
    if dtype is None or device.type == "meta":
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def baseline_step_fn(s: Setup, b: Baseline, device: torch.device, inputs: list[Any] | None = None):
    """step(i): the frame-wise multi-view step, written the way peer code writes it (eager)."""
    inputs = inputs or s.inputs
    autocast = _autocast(s.autocast_dtype, device)
    size = str(s.args.global_size)

    def step(i: int) -> dict[str, torch.Tensor]:
        batch = inputs[i % len(inputs)]
        if isinstance(batch, dict):  # --augment: the same production augmentation as our step
            batch = s.augment(batch, i, device)
        global_views, local_views = batch
        B, Vg, Vl = global_views.shape[0], global_views.shape[1], local_views.shape[1]
        b.schedules.apply(b.optimizer, i)
        student_temp, teacher_temp = b.schedules.temperatures(i)
        with autocast:
            with torch.no_grad():
                teacher_z = b.teacher_fwd(global_views.flatten(0, 1)).view(B, Vg, -1).transpose(0, 1)
            student_z = torch.cat([b.student_fwd(global_views.flatten(0, 1)).view(B, Vg, -1).transpose(0, 1),
                                   b.student_fwd(local_views.flatten(0, 1)).view(B, Vl, -1).transpose(0, 1)])
            loss, parts = b.loss_fn(student_z, teacher_z, student_temp, teacher_temp)
            loss.backward()
        parts["grad_norm"] = torch.nn.utils.clip_grad_norm_(b.student.parameters(), b.cfg.optim.clip_grad)
        b.optimizer.step()
        b.optimizer.zero_grad(set_to_none=True)
        ema_update(b.teacher.towers[size], b.student.towers[size], float(b.schedules.teacher_momentum[i]))
        return parts

    return step

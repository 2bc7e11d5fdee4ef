"""Per-iteration schedules (DINO style): one value per optimizer step, precomputed as arrays.

The schedules are the one owner of every per-step value of a run: the learning rates, the weight
decay, the EMA momentum and both loss temperatures (the student's is constant, but the step asks
for it here like for the teacher's, so no other code reads the loss config's temperatures).

Indexing an array gives a numpy float64, which is a Python float: it can go straight into an
optimizer's param group, or into a 0-dim device tensor for a compiled step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lss_cli.config import LossConfig, OptimConfig, TeacherConfig

if TYPE_CHECKING:
    import torch


def cosine_schedule(base: float, final: float, total_iters: int, warmup_iters: int = 0,
                    warmup_start: float = 0.0) -> np.ndarray:
    """[total_iters]: linear warm-up warmup_start -> base over warmup_iters, then cosine base -> final.

    The warm-up excludes its end (step warmup_iters is the first cosine step, == base); the last
    step equals `final` exactly.
    """
    if total_iters < 1 or not 0 <= warmup_iters <= total_iters:
        raise ValueError(f"need total_iters >= 1 and 0 <= warmup_iters <= total_iters, "
                         f"got {total_iters}, {warmup_iters}")
    warmup = np.linspace(warmup_start, base, warmup_iters, endpoint=False)
    n = total_iters - warmup_iters
    progress = np.arange(n) / max(n - 1, 1)  # 0 .. 1 inclusive
    cosine = final + 0.5 * (base - final) * (1.0 + np.cos(np.pi * progress))
    if n == 1:
        cosine = np.array([final])
    return np.concatenate([warmup, cosine]).astype(np.float64)


def warmup_constant_schedule(start: float, end: float, total_iters: int, warmup_iters: int) -> np.ndarray:
    """[total_iters]: linear start -> end over warmup_iters (end excluded), then constant end."""
    warmup_iters = min(warmup_iters, total_iters)
    warmup = np.linspace(start, end, warmup_iters, endpoint=False)
    return np.concatenate([warmup, np.full(total_iters - warmup_iters, end)]).astype(np.float64)


@dataclass
class Schedules:
    """Every per-step value the training loop needs, each an array [total_iters]."""

    lr: np.ndarray  # pretrained CLIP parameters
    temporal_lr: np.ndarray  # new temporal parameters
    weight_decay: np.ndarray  # for the decayed parameter groups
    teacher_momentum: np.ndarray  # EMA momentum
    teacher_temp: np.ndarray  # tau_t
    student_temp: np.ndarray  # tau_s (constant)

    def __len__(self) -> int:
        return len(self.lr)

    def temperatures(self, step: int) -> tuple[float, float]:
        """(tau_s, tau_t) of `step`, as the loss takes them."""
        return float(self.student_temp[step]), float(self.teacher_temp[step])

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Set lr / weight_decay of every param group for `step` (groups from VideoEncoder.param_groups)."""
        for group in optimizer.param_groups:
            group["lr"] = float(self.temporal_lr[step] if group.get("group") == "temporal" else self.lr[step])
            group["weight_decay"] = float(self.weight_decay[step]) if group.get("apply_weight_decay", True) else 0.0


def build_schedules(optim: OptimConfig, teacher: TeacherConfig, loss: LossConfig, iters_per_epoch: int,
                    lr_scale: float = 1.0) -> Schedules:
    """Schedules from the optimizer, teacher and loss configs.

    `lr_scale` multiplies the peak and final lrs (the linear scaling rule: global_batch / 256).
    """
    total = optim.epochs * iters_per_epoch
    warmup = min(int(round(optim.warmup_epochs * iters_per_epoch)), total)
    min_lr = optim.min_lr * lr_scale
    return Schedules(
        lr=cosine_schedule(optim.lr * lr_scale, min_lr, total, warmup),
        temporal_lr=cosine_schedule(optim.temporal_lr * lr_scale, min_lr, total, warmup),
        weight_decay=cosine_schedule(optim.weight_decay, optim.weight_decay_end, total),
        teacher_momentum=cosine_schedule(teacher.momentum, teacher.momentum_end, total),
        teacher_temp=warmup_constant_schedule(loss.warmup_teacher_temp, loss.teacher_temp, total,
                                              loss.warmup_teacher_temp_epochs * iters_per_epoch),
        student_temp=np.full(total, loss.student_temp, dtype=np.float64),
    )

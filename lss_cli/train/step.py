"""One LSS self-distillation step, DINO style: the teacher encodes the global views, the student
all views; the loss, backward, gradient clipping, AdamW, then the EMA teacher update.

The step runs on a run's `Components` (`lss_cli.train.build`) alone, so the epoch loop
(`lss_cli.train.loop`) and the benchmark (benchmarks/train_step.py) run the same step. Every
per-step value (lrs, weight decay, EMA momentum, both temperatures) comes from the schedules.
Augmentation randomness is a function of (seed, rank, step, micro-batch), so a resumed run
replays it exactly.

Batch independence: one step over N micro-batches of B clips (on one rank or several) trains like
one batch of N x B. The losses of every micro-batch use the step's statistics (`StepStats`: the
mean teacher score for the centre, the pooled prior's sums), so with N > 1 a statistics pass runs
first: the teacher on each micro-batch (its outputs are kept for the loss) and, for
loss.prior_scope=step, a no-grad student forward (the one extra cost, ~1 forward of N). The views
are made again for the backward pass (their randomness is seeded, so they are the same views).
The centre moves once, after the optimizer step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from lss_cli.data.augment import make_train_views
from lss_cli.runtime.seeding import sample_seed
from lss_cli.train.build import Components, Forward
from lss_cli.train.ema import ema_update
from lss_cli.train.losses import StepStats, Temp

# (global views [B, V_g, T, 3, G, G], local views [B, V_l, T_l, 3, L, L] or a list of one
# [B, T_i, 3, L, L] per view when the local views have different frame counts), float on the device
Views = tuple[torch.Tensor, torch.Tensor | list[torch.Tensor]]
# (micro-batch, its index in the step) -> views; the micro-batch is whatever the caller feeds
MakeViews = Callable[[Any, int], Views]


def train_step(c: Components, micro_batches: Sequence[Any], step: int,
               make_views: MakeViews | None = None) -> dict[str, torch.Tensor]:
    """One optimizer step over `accum` micro-batches: teacher forward (global views), student
    forward/backward (all views), clip, AdamW, EMA. Returns detached loss parts (no host sync).

    `make_views(batch, i)` turns a micro-batch into float views on the device (default: the
    loader's uint8 batch through the GPU-side augmentation); benchmarks pass ready-made views."""
    c.schedules.apply(c.optimizer, step)
    student_temp, teacher_temp = c.schedules.temperatures(step)
    autocast = torch.autocast(c.device.type, dtype=c.autocast_dtype) if c.autocast_dtype is not None \
        else nullcontext()
    parts_sum: dict[str, torch.Tensor] = {}
    make_views = make_views or (lambda batch, i: _augment(c, batch, step, i))
    n = len(micro_batches)
    teacher_zs, stats = _step_statistics(c, micro_batches, make_views, student_temp, autocast) if n > 1 \
        else ([None], None)
    for i, batch in enumerate(micro_batches):
        global_views, local_views = make_views(batch, i)  # [B, V_g, T, 3, G, G], [B, V_l, T_l, 3, L, L]
        B = global_views.shape[0]
        groups = _view_groups(global_views, local_views)
        # DDP all-reduces gradients only on the last micro-batch of an accumulation group.
        sync = i == n - 1 or not c.dist.distributed
        with autocast:
            teacher_z = teacher_zs[i]
            if teacher_z is None:
                with torch.no_grad():
                    teacher_z = _encode_views(c.teacher_fwd, groups[:1], B)  # [V_g, B, D]: global views only
            with (nullcontext() if sync else c.student.no_sync()):
                student_z = _encode_views(c.student_fwd, groups, B)  # [V_g + V_l, B, D]
                if stats is None:  # one micro-batch: it is the step
                    stats = c.loss_fn.step_stats(c.loss_fn.step_sums(teacher_z, student_z, student_temp), 1)
                loss, parts = c.loss_fn(student_z, teacher_z, student_temp, teacher_temp, update_center=False,
                                        step=stats)
                (loss / n).backward()
        for k, v in parts.items():
            parts_sum[k] = parts_sum.get(k, 0) + v / n
    if c.cfg.optim.clip_grad > 0:
        parts_sum["grad_norm"] = torch.nn.utils.clip_grad_norm_(c.student.parameters(), c.cfg.optim.clip_grad)
    c.optimizer.step()
    c.optimizer.zero_grad(set_to_none=True)
    ema_update(c.teacher, c.student_raw, float(c.schedules.teacher_momentum[step]))
    c.loss_fn.update_center(stats.teacher_mean)  # once per step, from all its micro-batches and ranks
    return parts_sum


def _step_statistics(c: Components, micro_batches: Sequence[Any], make_views: MakeViews, student_temp: Temp,
                     autocast: AbstractContextManager) -> tuple[list[torch.Tensor], StepStats]:
    """The statistics pass of an accumulated step: each micro-batch's teacher z [V_g, B, D] (kept
    for its loss) and the step's `StepStats` over all micro-batches and ranks (one all-reduce).
    With prior_scope=step the student runs too, without gradients, for the pooled prior's sums."""
    pooled = c.loss_fn.prior_scope == "step"
    teacher_zs, sums = [], None
    with torch.no_grad(), autocast:
        for i, batch in enumerate(micro_batches):
            global_views, local_views = make_views(batch, i)
            B = global_views.shape[0]
            groups = _view_groups(global_views, local_views)
            teacher_z = _encode_views(c.teacher_fwd, groups[:1], B)  # [V_g, B, D]
            student_z = _encode_views(c.student_fwd, groups, B) if pooled else None  # [V_s, B, D]
            teacher_zs.append(teacher_z)
            s = c.loss_fn.step_sums(teacher_z, student_z, student_temp)
            sums = s if sums is None else sums + s
    return teacher_zs, c.loss_fn.step_stats(sums, len(micro_batches))


def _augment(c: Components, batch: dict[str, Any], step: int, micro: int) -> Views:
    """The loader's uint8 batch -> augmented float views on the device."""
    # Parameters are drawn on the CPU, applied on the device. Augmentation randomness is a function
    # of (seed, rank, step, micro-batch), so a resumed run replays it exactly.
    g = torch.Generator().manual_seed(sample_seed(c.cfg.run.seed, c.dist.rank, step, micro))
    return make_train_views(batch, c.cfg.views, c.mean, c.std, c.device, generator=g)


def _view_groups(global_views: torch.Tensor,
                 local_views: torch.Tensor | list[torch.Tensor]) -> list[tuple[torch.Tensor, int]]:
    """(inputs [B*v, T, 3, S, S], v) for each group of same-shaped views: globals, then locals.

    Views of one size go through the encoder in one call; `local_views` is a list (one
    [B, T_i, 3, S, S] per view) when the local views have different frame counts."""
    groups = [(global_views.flatten(0, 1), global_views.shape[1])]
    if isinstance(local_views, torch.Tensor):
        if local_views.shape[1] > 0:
            groups.append((local_views.flatten(0, 1), local_views.shape[1]))
    else:
        groups.extend((view, 1) for view in local_views)
    return groups


def _encode_views(forward: Forward, groups: list[tuple[torch.Tensor, int]], batch: int) -> torch.Tensor:
    """Run the encoder on each view group and return z as [V, B, D] in view order."""
    out = []
    for x, v in groups:
        z = forward(x)  # [B*v, D]; flatten(0, 1) of [B, v] put view j of clip b at b * v + j
        out.append(z.view(batch, v, -1).transpose(0, 1))  # [v, B, D]
    return torch.cat(out, 0)

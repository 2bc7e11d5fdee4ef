"""The EMA teacher: teacher <- m * teacher + (1 - m) * student, over all parameters."""

from __future__ import annotations

import torch
from torch import nn


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP / torch.compile wrapper (the EMA pairs parameters by name)."""
    while True:
        inner = getattr(model, "module", None)
        inner = inner if isinstance(inner, nn.Module) else getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float | torch.Tensor) -> None:
    """In place: every teacher parameter becomes m * teacher + (1 - m) * student.

    `momentum` may be a float or a 0-dim tensor (on the parameters' device, to avoid a host sync and
    a recompile when it changes every step). Parameters are paired by name; DDP / compile wrappers
    are looked through. Buffers are left alone (the encoder has none that train).
    """
    t_named = dict(_unwrap(teacher).named_parameters())
    s_named = dict(_unwrap(student).named_parameters())
    if t_named.keys() != s_named.keys():
        missing = sorted(set(t_named) ^ set(s_named))[:5]
        raise ValueError(f"teacher and student parameters differ (e.g. {missing})")
    t_params = [t_named[name] for name in t_named]
    s_params = [s_named[name].detach() for name in t_named]
    torch._foreach_mul_(t_params, momentum)
    if isinstance(momentum, torch.Tensor):
        torch._foreach_add_(t_params, torch._foreach_mul(s_params, 1.0 - momentum))
    else:
        torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)

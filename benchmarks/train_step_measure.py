"""What the train-step benchmark measures, per variant: FLOPs, correctness, time and memory.

- FLOPs per step: `torch.utils.flop_counter.FlopCounterMode` over one step on meta tensors
  (forward + backward, model FLOPs: no activation-checkpointing recompute).
- Correctness first: a variant's first steps are compared with the eager reference step from the
  same initial state on the same inputs (and, for bf16, with an fp32 run of the same step).
- Then warm-up and timed blocks; one result row per variant (an OOM or another failure is a row
  too, not the end of the run).
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from bench_utils import count_flops, peak_memory, sync, time_blocks
from framewise import baseline_step_fn, build_baseline
from train_step_checks import profile_steps
from train_step_setup import VARIANTS, Setup, Variant, make_trainer, ours_step_fn, view_shapes

from lss_cli.train.build import Components
from lss_cli.train.step import train_step

LOSS_KEYS = ("loss", "cd_category", "cd_description", "ca", "uniform")

Losses = list[dict[str, float]]  # per check step: loss part -> value
Step = Callable[[int], dict[str, torch.Tensor]]  # step(i) -> loss parts


# --------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------


def meta_inputs(s: Setup) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [tuple(torch.empty(shape, device="meta") for shape in view_shapes(s.args))]


def count_ours(s: Setup) -> tuple[int, dict[str, int]]:
    """FLOPs of one production step (model FLOPs: no activation-checkpointing recompute)."""
    c = make_trainer(s, VARIANTS["eager"], device=torch.device("meta"), optimizer="sgd")
    views = meta_inputs(s)[0]
    return count_flops(lambda: train_step(c, [views], 0, make_views=lambda b, i: b))


def count_baseline(s: Setup) -> tuple[int, dict[str, int]]:
    b = build_baseline(s, torch.device("meta"), optimizer="sgd")
    step = baseline_step_fn(s, b, torch.device("meta"), inputs=meta_inputs(s))
    return count_flops(lambda: step(0))


# --------------------------------------------------------------------------------------------
# Correctness
# --------------------------------------------------------------------------------------------


def losses_of(parts_list: list[dict[str, torch.Tensor]]) -> Losses:
    return [{k: float(p[k]) for k in (*LOSS_KEYS, "grad_norm") if k in p} for p in parts_list]


def check_losses(got: Losses, ref: Losses, truth: Losses, precision: str) -> tuple[bool, float, str]:
    """(ok, worst relative error vs truth, message).

    fp32: the variant equals the eager reference to 1e-4 (relative; absolute floor 1e-6).
    bf16: the variant is within 1% of the fp32 step, or no farther from it than 2x the eager bf16 step.
    """
    worst, msg, ok = 0.0, "", True
    for step, (g, r, t) in enumerate(zip(got, ref, truth, strict=True)):
        for k in LOSS_KEYS:
            if k not in t:
                continue
            err = abs(g[k] - t[k])
            rel = err / max(abs(t[k]), 1e-6)
            bound = 1e-4 * abs(t[k]) + 1e-6 if precision == "fp32" else max(1e-2 * abs(t[k]), 2 * abs(r[k] - t[k]))
            if not err <= bound:  # NaN fails too
                ok, msg = False, msg or f"step {step} {k}: {g[k]:.6g} vs reference {t[k]:.6g} (bound {bound:.2g})"
            worst = max(worst, rel) if rel == rel else float("inf")
    return ok, worst, msg


def run_reference(s: Setup) -> tuple[Losses, Losses]:
    """(eager reference losses, fp32 losses) of the first check steps, from the initial state.

    On CUDA both run with activation checkpointing (the same values; it keeps B=32 and the fp32
    run inside an 80 GB card's memory). With fp32 precision the reference is the fp32 run.
    """
    eager = VARIANTS["eager-ac"] if s.device.type == "cuda" else VARIANTS["eager"]
    runs = [False] if s.precision == "fp32" else [False, True]
    out = []
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    for fp32 in runs:
        c = make_trainer(s, eager)
        if fp32:  # the same step without autocast, in true float32 matmuls and convolutions
            c.autocast_dtype = None
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        step = ours_step_fn(s, c, eager)
        try:
            out.append(losses_of([step(i) for i in range(s.args.check_steps)]))
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        del c, step
        free_device_memory(s.device)
    return out[0], out[-1]


# --------------------------------------------------------------------------------------------
# Timing: one row per variant
# --------------------------------------------------------------------------------------------


def free_device_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure(step: Step, s: Setup, name: str, flops_per_step: int, ceiling: float,
            check: Callable[[Losses], tuple[bool, float, str]] | None = None) -> dict[str, Any]:
    """Check steps (the first call compiles), warm-up, then timed blocks; one result row.

    Peak memory is that of the warm-up and timed steps (compilation's own allocations excluded).
    """
    a = s.args
    row: dict[str, Any] = {"variant": name}
    tic = time.perf_counter()
    parts = [step(i) for i in range(a.check_steps)]
    sync(s.device)
    row["first_steps_s"] = time.perf_counter() - tic  # includes compilation
    if check is not None:
        row["check_ok"], row["check_rel_err"], row["check_msg"] = check(losses_of(parts))
    del parts
    with peak_memory(s.device) as mem:
        timing = time_blocks(lambda i: step(a.check_steps + i), s.device, calls=a.steps, repeats=a.repeats,
                             warmup=a.warmup)
    row["step_s"], row["step_min_s"], row["step_max_s"] = timing["median_s"], timing["min_s"], timing["max_s"]
    row["clips_s"] = a.batch / row["step_s"]
    row["frames_s"] = row["clips_s"] * (a.global_views * a.global_frames + a.local_views * a.local_frames)
    row["gflop_clip"] = flops_per_step / a.batch / 1e9
    row["mfu"] = flops_per_step / row["step_s"] / ceiling
    row["peak_gib"] = mem["peak_gib"]
    row["gib_clip"] = None if mem["peak_gib"] is None else mem["peak_gib"] / a.batch
    return row


def guarded(name: str, device: torch.device, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one variant; an out-of-memory or other failure becomes a row, not the end of the run."""
    try:
        return fn()
    except torch.OutOfMemoryError as e:
        row = {"variant": name, "check": "OOM", "error": str(e).splitlines()[0][:200]}
    except Exception as e:  # noqa: BLE001 - one broken variant must not cost the others' numbers
        row = {"variant": name, "check": "ERROR", "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    print(f"{name}: {row['check']} ({row['error']})", file=sys.stderr)
    free_device_memory(device)
    return row


def run_variant(s: Setup, variant: Variant, flops: int, ceiling: float, ref: Losses, truth: Losses) -> dict[str, Any]:
    c = make_trainer(s, variant)
    step = ours_step_fn(s, c, variant)
    row = measure(step, s, variant.name, flops, ceiling,
                  check=lambda got: check_losses(got, ref, truth, s.precision))
    row["compiled"] = _compiled_ok(c) if variant.compile else None
    if s.args.profile and not s.args._profiled:
        profile_steps(step, s)
        s.args._profiled = True
    del c, step
    free_device_memory(s.device)
    return row


def _compiled_ok(c: Components) -> str:
    """'yes' when both towers still run compiled, else which one fell back to eager."""
    fell = [f.name for f in (c.student_fwd, c.teacher_fwd) if getattr(f, "compiled", "x") is None]
    return "yes" if not fell else "FELL BACK: " + ", ".join(fell)


def run_baseline(s: Setup, flops: int, ceiling: float) -> list[dict[str, Any]]:
    """The eager baseline (--baseline) and/or the compiled one (--baseline-compile)."""
    rows = []
    for compiled in [False] * s.args.baseline + [True] * s.args.baseline_compile:
        name = "baseline" + ("-compile" if compiled else "")
        rows.append(guarded(name, s.device, lambda c=compiled, n=name: _measure_baseline(s, c, n, flops, ceiling)))
    return rows


def _measure_baseline(s: Setup, compiled: bool, name: str, flops: int, ceiling: float) -> dict[str, Any]:
    b = build_baseline(s, s.device, compiled=compiled)
    row = measure(baseline_step_fn(s, b, s.device), s, name, flops, ceiling)
    if compiled:
        row["compiled"] = "yes" if all(getattr(f, "compiled", None) is not None for f in (b.student_fwd, b.teacher_fwd)) \
            else "FELL BACK"
    del b
    free_device_memory(s.device)
    return row

"""Diagnostics of the train-step benchmark: where the step's time goes and what stalls it.

- `profile_steps` (--profile): a torch.profiler table of 2 steps, and the attention ops by shape.
- `sdpa_check` (--sdpa-check): every attention call of the step under every SDPA backend (runs?
  time, rate), and the kernels the default dispatch picks.
- `sync_debug` (--sync-debug, CUDA only): the host syncs of the eager production step, each with
  the code line that caused it.
"""

from __future__ import annotations

import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from bench_utils import print_table, sync, time_blocks
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile
from train_step_setup import VARIANTS, Setup, make_inputs, make_trainer, ours_step_fn, with_args

from lss_cli.models.video import build_video_encoder

# --------------------------------------------------------------------------------------------
# Profile
# --------------------------------------------------------------------------------------------


def profile_steps(step: Callable[[int], Any], s: Setup, top: int = 15) -> None:
    """torch.profiler over 2 steps: the top ops/kernels, then the attention ops by input shape
    (spatial attention runs on 197 / 37 tokens, temporal attention on T-frame sequences)."""
    with profile(activities=_activities(s.device), record_shapes=True) as prof:
        for i in range(2):
            step(1000 + i)
        sync(s.device)
    on = "device" if s.device.type == "cuda" else "cpu"  # torch >= 2.4 names CUDA time "device"
    print(f"\nprofile of 2 steps (top {top} by self {on} time):")
    print(prof.key_averages().table(sort_by=f"self_{on}_time_total", row_limit=top, max_name_column_width=60))
    attention = [e for e in prof.key_averages(group_by_input_shape=True)
                 if e.key.startswith("aten::_scaled_dot_product") and "attention" in e.key]
    attention.sort(key=lambda e: -getattr(e, f"{on}_time_total"))
    print("attention ops by input shape (2 steps; [N, heads, sequence, head dim]):")
    for e in attention[:8]:
        print(f"  {getattr(e, f'{on}_time_total') / 1e3:9.2f} ms  {e.count:5d} calls  {e.key}  "
              f"{str(e.input_shapes)[:120]}")


def _activities(device: torch.device) -> list[ProfilerActivity]:
    return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])


# --------------------------------------------------------------------------------------------
# SDPA backends
# --------------------------------------------------------------------------------------------


def attention_shapes(s: Setup) -> dict[str, tuple[int, int, int, int]]:
    """[N, heads, sequence, head dim] of the step's spatial and temporal attention calls at B/4 clips."""
    a, enc = s.args, build_video_encoder(s.clip, s.cfg.model)
    heads = enc.visual.transformer.resblocks[0].attn.num_heads
    d, patch, b = enc.width // heads, enc.patch_size[0], max(1, a.batch // 4)
    g_tokens, l_tokens = (a.global_size // patch) ** 2 + 1, (a.local_size // patch) ** 2 + 1
    shapes = {f"spatial {a.global_size}px": (b * a.global_views * a.global_frames, heads, g_tokens, d),
              f"spatial {a.local_size}px": (b * a.local_views * a.local_frames, heads, l_tokens, d)}
    if enc.temporal_blocks is not None:
        shapes[f"temporal {a.global_size}px"] = (b * a.global_views * g_tokens, heads, a.global_frames, d)
        shapes[f"temporal {a.local_size}px"] = (b * a.local_views * l_tokens, heads, a.local_frames, d)
    return shapes


def sdpa_check(s: Setup) -> tuple[list[dict[str, Any]], str]:
    """Each attention shape of the step under each SDPA backend: runs? forward+backward time and rate.

    Temporal attention runs on sequences of T (8) frames: its FLOPs are negligible, but kernels tiled
    for long sequences may spend far more time on it than its FLOPs suggest.
    """
    dtype = torch.bfloat16 if s.device.type == "cuda" else torch.float32
    backends = [("default", None)] + [(b.name.lower(), b) for b in (
        SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH)]
    rows = []
    for kind, shape in attention_shapes(s).items():
        q, k, v = (torch.randn(shape, device=s.device, dtype=dtype, requires_grad=True) for _ in range(3))
        flops = 7 * 2 * shape[0] * shape[1] * shape[2] ** 2 * shape[3]  # 2 matmuls forward, 5 backward

        def fwd_bwd(_: int, q=q, k=k, v=v) -> None:
            F.scaled_dot_product_attention(q, k, v).sum().backward()

        for name, backend in backends:
            row = {"shape": f"{kind} {list(shape)}", "backend": name}
            try:
                with sdpa_kernel([backend]) if backend is not None else nullcontext():
                    sec = time_blocks(fwd_bwd, s.device, calls=3, repeats=3, warmup=1)["median_s"]
                row.update(ms=sec * 1e3, tflops=flops / sec / 1e12)
            except RuntimeError as e:
                row["error"] = str(e).splitlines()[0][:60]
            rows.append(row)
        del q, k, v
    return rows, _default_attention_kernels(s)


def _default_attention_kernels(s: Setup) -> str:
    """The attention kernels one eager student forward+backward dispatches to (profiler names)."""
    student = build_video_encoder(s.clip, s.cfg.model).to(s.device)
    global_views, _ = make_inputs(with_args(s.args, augment=False, batch=1), s.device, seed=99)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if s.device.type == "cuda" else nullcontext()

    def fwd_bwd(_: int) -> None:
        with autocast:
            z = student(global_views.flatten(0, 1)).float().sum()
        z.backward()

    return _attention_kernels(fwd_bwd, s.device)


def _attention_kernels(fn: Callable[[int], None], device: torch.device) -> str:
    """Names of the attention ops/kernels the default dispatch ran (profiler)."""
    with profile(activities=_activities(device)) as prof:
        fn(0)
        sync(device)
    names = {e.key for e in prof.key_averages()
             if any(w in e.key.lower() for w in ("attention", "flash", "fmha", "sdpa", "cudnn"))}
    return "; ".join(sorted(names))[:400] or "none found"


# --------------------------------------------------------------------------------------------
# Host syncs
# --------------------------------------------------------------------------------------------


def sync_debug(s: Setup, steps: int = 2) -> list[dict[str, Any]] | None:
    """Host syncs per step of the eager production step, with the code line that caused each.

    `torch.cuda.set_sync_debug_mode("warn")` warns at every synchronising CUDA call; the hook
    records the innermost Python frame and the innermost lss_cli/benchmark frame. The first step
    is excluded (one-time syncs: cuBLAS handles, allocator growth).
    """
    if s.device.type != "cuda":
        print("\n--sync-debug: CUDA only (torch.cuda.set_sync_debug_mode); skipped")
        return None
    c = make_trainer(s, VARIANTS["eager-ac"])
    step = ours_step_fn(s, c, VARIANTS["eager-ac"])
    step(0)
    sync(s.device)
    sites: Counter[str] = Counter()

    def hook(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message):
            sites[_call_site()] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = hook
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for i in range(1, steps + 1):
                step(i)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    sync(s.device)
    rows = [{"site": site, "per_step": n / steps} for site, n in sites.most_common()]
    print(f"\nhost syncs per step (eager, augment={'on' if s.args.augment else 'off'}): "
          f"{sum(sites.values()) / steps:g}")
    print_table(rows, [("site", "call site (innermost <- innermost lss_cli/benchmarks frame)", ""),
                       ("per_step", "per step", ".1f")])
    return rows


def _call_site() -> str:
    frames = [f for f in traceback.extract_stack()[:-2] if "warnings" not in f.filename]
    inner = frames[-1] if frames else None
    ours = next((f for f in reversed(frames) if "lss_cli" in f.filename or "benchmarks" in f.filename), None)
    if inner is None:
        return "?"
    return _where(inner) + (f"  <-  {_where(ours)}" if ours is not None and ours is not inner else "")


def _where(frame: traceback.FrameSummary) -> str:
    return f"{'/'.join(Path(frame.filename).parts[-2:])}:{frame.lineno} {frame.line or ''}".strip()

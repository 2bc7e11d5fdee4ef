"""Shared pieces of the GPU-performance benchmarks (train_step.py, eval_forward.py).

- `matmul_ceiling`: the measured matmul rate of this device (bf16 on CUDA, fp32 on CPU), the
  denominator of every MFU printed here (benchmarks/RESULTS.md §2: MFU = counted FLOPs / time /
  measured ceiling).
- `count_flops`: FLOPs of a callable counted by `torch.utils.flop_counter.FlopCounterMode` on
  meta tensors (shapes only, so ViT-B-16 counts in a second on a CPU). Attention is counted with
  the fused-kernel convention torch uses on CUDA (backward = 5 matmuls, i.e. it recomputes the
  scores), so a count made here equals the count of the same step on a GPU.
- `time_blocks`: wall time per call of a step, measured over back-to-back blocks with one device
  sync per block (a sync per step would add a launch bubble the training loop does not have).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

GIB = 2**30


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def environment(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on (printed first and stored with the results)."""
    env = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "torch": torch.__version__,
           "python": platform.python_version(), "device": str(device), "threads": torch.get_num_threads(),
           "cpu": _cpu_name(), "cpu_cores": os.cpu_count()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_mem_gib=round(props.total_memory / GIB, 1), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    try:
        import open_clip

        env["open_clip"] = open_clip.__version__
    except Exception:  # noqa: BLE001 - informational only
        pass
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---- the ceiling -----------------------------------------------------------------------------


def matmul_ceiling(device: torch.device, dtype: torch.dtype, size: int | None = None, repeats: int = 3) -> float:
    """Measured FLOP/s of a large square matmul (median over `repeats` blocks, random operands).

    Three operand pairs are rotated so repeated calls do not run from cache; zeros are never timed.
    """
    size = size or (8192 if device.type == "cuda" else 2048)
    gen = torch.Generator(device="cpu").manual_seed(0)
    pairs = [(torch.randn(size, size, generator=gen).to(device, dtype), torch.randn(size, size, generator=gen)
              .to(device, dtype)) for _ in range(3)]
    calls = 20 if device.type == "cuda" else 2

    def block(i: int) -> None:
        a, b = pairs[i % 3]
        torch.mm(a, b)

    per_call = time_blocks(block, device, calls=calls, repeats=repeats, warmup=2)["median_s"]
    return 2 * size**3 / per_call


# ---- timing ----------------------------------------------------------------------------------


def time_blocks(step: Callable[[int], Any], device: torch.device, *, calls: int, repeats: int,
                warmup: int = 1) -> dict[str, float]:
    """Seconds per call of `step(i)`: `repeats` blocks of `calls` back-to-back calls, one sync each.

    Returns median / min / max over blocks (the spread says how much of a difference is noise).
    """
    for i in range(warmup):
        step(i)
    sync(device)
    per_call = []
    for r in range(repeats):
        sync(device)
        tic = time.perf_counter()
        for i in range(calls):
            step(warmup + r * calls + i)
        sync(device)
        per_call.append((time.perf_counter() - tic) / calls)
    return {"median_s": statistics.median(per_call), "min_s": min(per_call), "max_s": max(per_call)}


@contextmanager
def peak_memory(device: torch.device):
    """Yields a dict filled with the peak allocated GiB of the block (CUDA only; None on CPU)."""
    out: dict[str, float | None] = {"peak_gib": None}
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
    yield out
    if device.type == "cuda":
        sync(device)
        out["peak_gib"] = torch.cuda.max_memory_allocated(device) / GIB


# ---- FLOP counting -------------------------------------------------------------------------


_sdpa = F.scaled_dot_product_attention


def _fused_attention_on_meta(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
    """`F.scaled_dot_product_attention`, routed on meta tensors to the memory-efficient attention op.

    On meta tensors SDPA picks its math fallback (two bmm forward, four backward). On CUDA it runs
    a fused kernel whose FLOP formula counts the backward as five matmuls (the scores are
    recomputed); routing through the fused op makes a meta count equal a CUDA count.
    """
    if q.device.type == "meta" and attn_mask is None and dropout_p == 0.0 and not is_causal and not kwargs:
        return torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, scale=scale)[0]
    return _sdpa(q, k, v, attn_mask, dropout_p, is_causal, scale=scale, **kwargs)


_autocast = torch.autocast


def _autocast_meta_as_cpu(device_type: str, *args: Any, **kwargs: Any):
    """`torch.autocast`, with "meta" (which autocast refuses) read as "cpu": the code under count
    opens `torch.autocast(x.device.type, enabled=False)` blocks, which mean nothing on meta."""
    return _autocast("cpu" if device_type == "meta" else device_type, *args, **kwargs)


@contextmanager
def meta_device_patches():
    """Lets the production code run on meta tensors as it would on CUDA: fused attention, and
    autocast blocks opened with device "meta". Used to count FLOPs and, in the tests, to prove the
    step has no host sync."""
    # Patched on the modules: our encoder, our loss and nn.MultiheadAttention (open_clip's towers)
    # look these up there at call time.
    F.scaled_dot_product_attention = _fused_attention_on_meta
    torch.autocast = _autocast_meta_as_cpu
    try:
        yield
    finally:
        F.scaled_dot_product_attention = _sdpa
        torch.autocast = _autocast


def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """(total FLOPs, FLOPs per aten op) of `fn()`, which should run on meta tensors."""
    with meta_device_patches(), FlopCounterMode(display=False) as counter:
        fn()
    per_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), per_op


# ---- output --------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> None:
    """columns: (key, header, format spec)."""
    cells = [[h for _, h, _ in columns]] + [[fmt(r.get(k), s) if not isinstance(r.get(k), str) else r[k]
                                            for k, _, s in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for j, row in enumerate(cells):
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if not path:
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, default=str)
    os.replace(tmp, path)

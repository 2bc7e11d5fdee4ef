"""Time the full LSS self-distillation step against a frame-wise open_clip baseline, in one run.

The step is the production `lss_cli.train.loop.train_step` (teacher forward on the global views,
student forward/backward on all views, loss, gradient clipping, AdamW, EMA) on a Trainer built
here with random weights and a random concept bank (K=530, M=5300 unit rows). Views are
synthetic tensors already on the device, so decoding (and, unless --augment, augmentation) is
excluded. In the same run: the frame-wise baseline step (open_clip image towers per frame for the
global and the local resolution, sharing weights; teacher on global views; mean over frames; the
same loss, AdamW and EMA; eager), a matmul ceiling, and FLOPs per clip counted with
`torch.utils.flop_counter.FlopCounterMode` (forward + backward, on meta tensors).

Correctness comes first: each variant's first steps are compared with the eager reference step
from the same initial state on the same inputs (and, for bf16, with an fp32 run of the same step).

    python benchmarks/train_step.py --tiny                          # CPU, lss-tiny, seconds
    python benchmarks/train_step.py                                 # CUDA, ViT-B-16, B=32, compiled
    python benchmarks/train_step.py --variants eager,compile,compile-ac --batch 32 --json out.json
    python benchmarks/train_step.py --tiny --variants compile --backend aot_eager --profile

Variants: eager, eager-ac, compile, compile-ac (ac = activation checkpointing), compile-max
(Inductor max-autotune without CUDA graphs), compile-cg (mode reduce-overhead: CUDA graphs).
"""

from __future__ import annotations

import argparse
import copy
import gc
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from bench_utils import (
    count_flops,
    environment,
    matmul_ceiling,
    peak_memory,
    print_table,
    sync,
    time_blocks,
    write_json,
)
from torch import nn

LOSS_KEYS = ("loss", "cd_category", "cd_description", "ca", "uniform")


@dataclass(frozen=True)
class Variant:
    name: str
    compile: bool = False
    mode: str | None = None  # torch.compile mode
    ckpt: bool = False  # activation checkpointing of every block


VARIANTS = {v.name: v for v in (
    Variant("eager"), Variant("eager-ac", ckpt=True), Variant("compile", compile=True),
    Variant("compile-ac", compile=True, ckpt=True),
    Variant("compile-max", compile=True, mode="max-autotune-no-cudagraphs"),
    Variant("compile-cg", compile=True, mode="reduce-overhead"),
)}

TINY = {"model": "lss-tiny", "variants": "eager,compile", "backend": "aot_eager", "batch": 4, "global_frames": 4, "global_size": 64, "local_views": 4,
        "local_frames": 4, "local_size": 32, "steps": 3, "repeats": 3, "warmup": 1}
FULL = {"model": "ViT-B-16", "backend": "inductor", "batch": 32, "global_frames": 8, "global_size": 224, "local_views": 8,
        "local_frames": 8, "local_size": 96, "steps": 5, "repeats": 3, "warmup": 2}


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="lss-tiny with small views (CPU smoke run)")
    p.add_argument("--model", help="open_clip model name [ViT-B-16; lss-tiny with --tiny]")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, help="clips per step [32; 4 with --tiny]")
    p.add_argument("--global-views", type=int, default=2)
    p.add_argument("--global-frames", type=int)
    p.add_argument("--global-size", type=int)
    p.add_argument("--local-views", type=int)
    p.add_argument("--local-frames", type=int)
    p.add_argument("--local-size", type=int)
    p.add_argument("--temporal", choices=("divided", "mean"), default="divided")
    p.add_argument("--variants", help="comma-separated: " + ", ".join(VARIANTS)
                   + ", or none [eager,compile with --tiny; else one, from --compile / --checkpointing]")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the towers [on on CUDA, off on CPU]")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing of every block")
    p.add_argument("--backend", help="torch.compile backend [inductor; aot_eager with --tiny: compiles in seconds "
                   "on a CPU and still checks graph capture and AOT autograd]")
    p.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="auto",
                   help="auto = the production choice: bf16 autocast on CUDA, fp32 on CPU")
    p.add_argument("--steps", type=int, help="steps per timed block")
    p.add_argument("--repeats", type=int, help="timed blocks (the median is reported)")
    p.add_argument("--warmup", type=int, help="untimed steps after the check steps")
    p.add_argument("--check-steps", type=int, default=2, help="steps compared with the reference")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the frame-wise open_clip baseline step")
    p.add_argument("--baseline-compile", action="store_true",
                   help="also time the baseline with torch.compile (SPEC §5 measured 101 clips/s on an H200)")
    p.add_argument("--augment", action="store_true",
                   help="feed uint8 views through the production GPU-side augmentation (part of the step)")
    p.add_argument("--profile", action="store_true", help="torch.profiler table of 2 steps of the first variant")
    p.add_argument("--sdpa-check", action="store_true", help="which attention backend runs, and each one's time")
    p.add_argument("--sync-debug", action="store_true",
                   help="list the host syncs of the eager step (torch.cuda.set_sync_debug_mode; CUDA only)")
    p.add_argument("--count-only", action="store_true",
                   help="only count FLOPs per clip (meta tensors: no device time, any model size on a CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write all results here")
    args = p.parse_args(argv)
    defaults = TINY if args.tiny else FULL
    if args.tiny and (args.compile is not None or args.checkpointing):
        defaults = {k: v for k, v in defaults.items() if k != "variants"}  # the flags pick the variant
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def _with(args: argparse.Namespace, **changes: Any) -> argparse.Namespace:
    return argparse.Namespace(**(vars(args) | changes))


def resolve_variants(args: argparse.Namespace, device: torch.device) -> list[Variant]:
    if args.variants == "none":  # only the baseline / diagnostics
        return []
    if args.variants:
        unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
        if unknown:
            raise SystemExit(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
        return [VARIANTS[v] for v in args.variants.split(",")]
    compile_on = args.compile if args.compile is not None else device.type == "cuda"
    return [VARIANTS[("compile" if compile_on else "eager") + ("-ac" if args.checkpointing else "")]]


def precision_of(args: argparse.Namespace, device: torch.device) -> str:
    """The dtype the steps run in. train_step always autocasts to bf16 on CUDA."""
    if args.dtype == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if args.dtype == "fp32" and device.type == "cuda":
        raise SystemExit("--dtype fp32 on CUDA: train_step always runs under bf16 autocast on CUDA")
    return args.dtype


def outer_autocast(precision: str, device: torch.device):
    """bf16 on CPU is not a production setting; the benchmark adds the autocast around the step."""
    if precision == "bf16" and device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


# --------------------------------------------------------------------------------------------
# Models, inputs and Trainers
# --------------------------------------------------------------------------------------------


def random_bank(num_categories: int, num_descriptions: int, dim: int, seed: int) -> dict[str, torch.Tensor]:
    """Unit rows; description m belongs to category m mod K (10 each for 530 / 5300)."""
    g = torch.Generator().manual_seed(seed)
    return {"category": F.normalize(torch.randn(num_categories, dim, generator=g), dim=-1),
            "description": F.normalize(torch.randn(num_descriptions, dim, generator=g), dim=-1),
            "description_owner": torch.arange(num_descriptions) % num_categories}


@dataclass
class Setup:
    """What every variant starts from (CPU copies), the inputs, and the fixed numbers."""

    args: argparse.Namespace
    device: torch.device
    precision: str
    cfg: Any  # TrainConfig
    clip: Any  # lss_cli.models.clip.Clip (random init)
    student: nn.Module
    teacher: nn.Module
    loss_fn: nn.Module
    inputs: list[Any]  # rotated per step: (global, local) float views or uint8 loader-like batches


def build_setup(args: argparse.Namespace, device: torch.device) -> Setup:
    from lss_cli.config import TrainConfig
    from lss_cli.models.clip import load_clip
    from lss_cli.models.video import build_video_encoder
    from lss_cli.train.losses import LSSLoss

    cfg = TrainConfig()
    cfg.model.name, cfg.model.pretrained, cfg.model.temporal = args.model, None, args.temporal
    cfg.model.num_frames = args.global_frames
    cfg.optim.warmup_epochs = 0.0  # peak lr from step 0, so the check steps exercise the update
    cfg.views.global_views, cfg.views.global_frames, cfg.views.global_size = (
        args.global_views, args.global_frames, args.global_size)
    cfg.views.local_views, cfg.views.local_frames, cfg.views.local_size = (
        args.local_views, [args.local_frames], args.local_size)
    clip = load_clip(args.model, None, seed=args.seed)
    torch.manual_seed(args.seed)
    student = build_video_encoder(clip, cfg.model)
    teacher = copy.deepcopy(student).requires_grad_(False).eval()
    loss_fn = LSSLoss.from_config(random_bank(530, 5300, clip.embed_dim, args.seed), cfg.loss)
    inputs = [make_inputs(args, device, seed=args.seed + 1 + i) for i in range(2)]
    return Setup(args, device, precision_of(args, device), cfg, clip, student, teacher, loss_fn, inputs)


def view_shapes(args: argparse.Namespace) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(global [B, V_g, T_g, 3, G, G], local [B, V_l, T_l, 3, L, L])."""
    return ((args.batch, args.global_views, args.global_frames, 3, args.global_size, args.global_size),
            (args.batch, args.local_views, args.local_frames, 3, args.local_size, args.local_size))


def make_inputs(args: argparse.Namespace, device: torch.device, seed: int) -> Any:
    """Random normalised-pixel views on the device, or (--augment) a pinned uint8 loader batch."""
    g = torch.Generator().manual_seed(seed)
    shapes = view_shapes(args)
    if args.augment:
        batch = {k: torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
                 for k, shape in zip(("global", "local"), shapes, strict=True)}
        return {k: v.pin_memory() if device.type == "cuda" else v for k, v in batch.items()}
    return tuple(torch.randn(s, generator=g).to(device) for s in shapes)


def make_trainer(s: Setup, variant: Variant, device: torch.device | None = None, optimizer: str = "adamw"):
    """A production Trainer around copies of the initial models, on `device` (default s.device).

    `optimizer="sgd"` is for FLOP counting on meta tensors (AdamW reads its step count on the host).
    """
    from lss_cli.runtime.compile import maybe_compile
    from lss_cli.runtime.dist import DistInfo
    from lss_cli.train.loop import Trainer
    from lss_cli.train.schedules import build_schedules

    device = device or s.device
    student = copy.deepcopy(s.student).to(device)
    student.grad_checkpointing = variant.ckpt
    teacher = copy.deepcopy(s.teacher).to(device)
    groups = student.param_groups(s.cfg.optim.lr, s.cfg.optim.temporal_lr, s.cfg.optim.weight_decay)
    opt = (torch.optim.AdamW(groups, betas=s.cfg.optim.betas, fused=device.type == "cuda") if optimizer == "adamw"
           else torch.optim.SGD(groups, lr=0.0))
    iters = 100_000  # longer than any benchmark: the schedules are only indexed
    schedules = build_schedules(s.cfg.optim, s.cfg.teacher, s.cfg.loss, iters, lr_scale=s.args.batch / 256)
    kw = {"backend": s.args.backend} | ({"mode": variant.mode} if variant.mode else {})
    return Trainer(cfg=s.cfg, dist=DistInfo(), device=device, run_dir=Path(tempfile.gettempdir()), student=student,
                   student_raw=student, teacher=teacher, loss_fn=copy.deepcopy(s.loss_fn).to(device), optimizer=opt,
                   loader=None, schedules=schedules, iters_per_epoch=iters, accum=1, mean=s.clip.mean,
                   std=s.clip.std, student_fwd=maybe_compile(student, "student", variant.compile, **kw),
                   teacher_fwd=maybe_compile(teacher, "teacher", variant.compile, **kw))


def augment_batch(s: Setup, batch: dict[str, torch.Tensor], step: int, device: torch.device):
    """The production `make_train_views` (pinned uint8 views -> augmented float views on the device),
    seeded per step. Imported from `lss_cli.data.augment`, not the loader module, which imports
    torchcodec (absent on the GPU image)."""
    from lss_cli.data.augment import make_train_views

    g = torch.Generator().manual_seed(s.args.seed * 1_000_003 + step)
    return make_train_views(batch, s.cfg.views, s.clip.mean, s.clip.std, device, generator=g)


def ours_step_fn(s: Setup, t, variant: Variant, fp32: bool = False):
    """step(i) -> loss parts: one production train_step on input set i mod 2.

    `fp32=True` runs the same step with autocast off on CUDA: the Trainer handed to train_step says
    "cpu", which is the only thing train_step reads to choose autocast (views come ready-made).
    """
    from lss_cli.train.loop import train_step

    step_t = replace(t, device=torch.device("cpu")) if fp32 and s.device.type == "cuda" else t
    autocast = nullcontext() if fp32 else outer_autocast(s.precision, s.device)

    def step(i: int):
        batch = s.inputs[i % len(s.inputs)]
        if s.args.augment:
            make_views = lambda b, m: augment_batch(s, b, i, s.device)  # noqa: E731
        else:
            make_views = lambda b, m: b  # noqa: E731 - ready-made device views
        if variant.mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # a training loop marks each iteration
        with autocast:
            return train_step(step_t, [batch], i, make_views=make_views)

    return step


# --------------------------------------------------------------------------------------------
# The frame-wise baseline
# --------------------------------------------------------------------------------------------


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
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    schedules: Any
    cfg: Any
    student_fwd: Any
    teacher_fwd: Any


def build_baseline(s: Setup, device: torch.device, compiled: bool = False, optimizer: str = "adamw") -> Baseline:
    from lss_cli.models.clip import load_clip
    from lss_cli.models.video import split_decay
    from lss_cli.runtime.compile import maybe_compile
    from lss_cli.train.schedules import build_schedules

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
    schedules = build_schedules(s.cfg.optim, s.cfg.teacher, s.cfg.loss, 100_000, lr_scale=a.batch / 256)
    kw = {"backend": a.backend}
    return Baseline(student, teacher, copy.deepcopy(s.loss_fn).to(device), opt, schedules, s.cfg,
                    maybe_compile(student, "baseline student", compiled, **kw),
                    maybe_compile(teacher, "baseline teacher", compiled, **kw))


def baseline_step_fn(s: Setup, b: Baseline, device: torch.device, inputs: list[Any] | None = None):
    """step(i): the frame-wise multi-view step, written the way peer code writes it (eager)."""
    from lss_cli.train.ema import ema_update

    inputs = inputs or s.inputs
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else outer_autocast(s.precision, device))
    size = str(s.args.global_size)

    def step(i: int) -> dict[str, torch.Tensor]:
        batch = inputs[i % len(inputs)]
        if isinstance(batch, dict):  # --augment: the same production augmentation as our step
            batch = augment_batch(s, batch, i, device)
        global_views, local_views = batch
        B, Vg, Vl = global_views.shape[0], global_views.shape[1], local_views.shape[1]
        b.schedules.apply(b.optimizer, i)
        with autocast:
            with torch.no_grad():
                teacher_z = b.teacher_fwd(global_views.flatten(0, 1)).view(B, Vg, -1).transpose(0, 1)
            student_z = torch.cat([b.student_fwd(global_views.flatten(0, 1)).view(B, Vg, -1).transpose(0, 1),
                                   b.student_fwd(local_views.flatten(0, 1)).view(B, Vl, -1).transpose(0, 1)])
            loss, parts = b.loss_fn(student_z, teacher_z, b.cfg.loss.student_temp, float(b.schedules.teacher_temp[i]))
            loss.backward()
        parts["grad_norm"] = torch.nn.utils.clip_grad_norm_(b.student.parameters(), b.cfg.optim.clip_grad)
        b.optimizer.step()
        b.optimizer.zero_grad(set_to_none=True)
        ema_update(b.teacher.towers[size], b.student.towers[size], float(b.schedules.teacher_momentum[i]))
        return parts

    return step


# --------------------------------------------------------------------------------------------
# FLOPs, correctness, timing
# --------------------------------------------------------------------------------------------


def meta_inputs(s: Setup) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [tuple(torch.empty(shape, device="meta") for shape in view_shapes(s.args))]


def count_ours(s: Setup) -> tuple[int, dict[str, int]]:
    """FLOPs of one production step (model FLOPs: no activation-checkpointing recompute)."""
    from lss_cli.train.loop import train_step

    t = make_trainer(s, VARIANTS["eager"], device=torch.device("meta"), optimizer="sgd")
    views = meta_inputs(s)[0]
    return count_flops(lambda: train_step(t, [views], 0, make_views=lambda b, i: b))


def count_baseline(s: Setup) -> tuple[int, dict[str, int]]:
    b = build_baseline(s, torch.device("meta"), optimizer="sgd")
    step = baseline_step_fn(s, b, torch.device("meta"), inputs=meta_inputs(s))
    return count_flops(lambda: step(0))


def losses_of(parts_list: list[dict[str, torch.Tensor]]) -> list[dict[str, float]]:
    return [{k: float(p[k]) for k in (*LOSS_KEYS, "grad_norm") if k in p} for p in parts_list]


def check_losses(got: list[dict[str, float]], ref: list[dict[str, float]], truth: list[dict[str, float]],
                 precision: str) -> tuple[bool, float, str]:
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


def free_device_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_reference(s: Setup) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """(eager reference losses, fp32 losses) of the first check steps, from the initial state.

    On CUDA both run with activation checkpointing (the same values; it keeps B=32 and the fp32
    run inside an 80 GB card's memory). With fp32 precision the reference is the fp32 run.
    """
    eager = VARIANTS["eager-ac"] if s.device.type == "cuda" else VARIANTS["eager"]
    runs = [False] if s.precision == "fp32" else [False, True]
    out = []
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    for fp32 in runs:
        t = make_trainer(s, eager)
        step = ours_step_fn(s, t, eager, fp32=fp32)
        if fp32:  # true float32 matmuls and convolutions
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            out.append(losses_of([step(i) for i in range(s.args.check_steps)]))
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        del t, step
        free_device_memory(s.device)
    return out[0], out[-1]


def measure(step, s: Setup, name: str, flops_per_step: int, ceiling: float, check=None) -> dict[str, Any]:
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


def guarded(name: str, device: torch.device, fn) -> dict[str, Any]:
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


def run_variant(s: Setup, variant: Variant, flops: int, ceiling: float, ref, truth) -> dict[str, Any]:
    t = make_trainer(s, variant)
    step = ours_step_fn(s, t, variant)
    row = measure(step, s, variant.name, flops, ceiling,
                  check=lambda got: check_losses(got, ref, truth, s.precision))
    row["compiled"] = _compiled_ok(t) if variant.compile else None
    if s.args.profile and not s.args._profiled:
        profile_steps(step, s)
        s.args._profiled = True
    del t, step
    free_device_memory(s.device)
    return row


def _compiled_ok(t) -> str:
    """'yes' when both towers still run compiled, else which one fell back to eager."""
    fell = [f.name for f in (t.student_fwd, t.teacher_fwd) if getattr(f, "compiled", "x") is None]
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


# --------------------------------------------------------------------------------------------
# Diagnostics: profile, SDPA backends
# --------------------------------------------------------------------------------------------


def profile_steps(step, s: Setup, top: int = 15) -> None:
    """torch.profiler over 2 steps: the top ops/kernels, then the attention ops by input shape
    (spatial attention runs on 197 / 37 tokens, temporal attention on T-frame sequences)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if s.device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
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


def attention_shapes(s: Setup) -> dict[str, tuple[int, int, int, int]]:
    """[N, heads, sequence, head dim] of the step's spatial and temporal attention calls at B/4 clips."""
    a, enc = s.args, s.student
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
    from torch.nn.attention import SDPBackend, sdpa_kernel

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
    student = copy.deepcopy(s.student).to(s.device)
    global_views, _ = make_inputs(_with(s.args, augment=False, batch=1), s.device, seed=99)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if s.device.type == "cuda" else nullcontext()

    def fwd_bwd(_: int) -> None:
        with autocast:
            z = student(global_views.flatten(0, 1)).float().sum()
        z.backward()

    return _attention_kernels(fwd_bwd, s.device)


def _attention_kernels(fn, device: torch.device) -> str:
    """Names of the attention ops/kernels the default dispatch ran (profiler)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        fn(0)
        sync(device)
    names = {e.key for e in prof.key_averages()
             if any(w in e.key.lower() for w in ("attention", "flash", "fmha", "sdpa", "cudnn"))}
    return "; ".join(sorted(names))[:400] or "none found"


def sync_debug(s: Setup, steps: int = 2) -> list[dict[str, Any]] | None:
    """Host syncs per step of the eager production step, with the code line that caused each.

    `torch.cuda.set_sync_debug_mode("warn")` warns at every synchronising CUDA call; the hook
    records the innermost Python frame and the innermost lss_cli/benchmark frame. The first step
    is excluded (one-time syncs: cuBLAS handles, allocator growth).
    """
    if s.device.type != "cuda":
        print("\n--sync-debug: CUDA only (torch.cuda.set_sync_debug_mode); skipped")
        return None
    t = make_trainer(s, VARIANTS["eager-ac"])
    step = ours_step_fn(s, t, VARIANTS["eager-ac"])
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


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------

COLUMNS = [("variant", "variant", ""), ("step_s", "s/step", ".4f"), ("clips_s", "clips/s", ".1f"),
           ("frames_s", "frames/s", ".0f"), ("gflop_clip", "GFLOP/clip", ".1f"), ("mfu", "MFU", ".1%"),
           ("peak_gib", "peak GiB", ".1f"), ("gib_clip", "GiB/clip", ".2f"), ("first_steps_s", "first s", ".1f"),
           ("check", "check", "")]


def print_flop_breakdown(ops: dict[str, int], base_ops: dict[str, int], batch: int) -> None:
    rows = [{"op": k, "ours": ops.get(k, 0) / batch / 1e9, "baseline": base_ops.get(k, 0) / batch / 1e9}
            for k in sorted(set(ops) | set(base_ops))]
    print("\nGFLOP per clip by op:")
    print_table(rows, [("op", "op", ""), ("ours", "ours", ".2f"), ("baseline", "baseline", ".2f")])


SDPA_COLUMNS = [("shape", "call [N, heads, seq, dim]", ""), ("backend", "backend", ""), ("ms", "ms", ".2f"),
                ("tflops", "TFLOP/s", ".3g"), ("error", "error", "")]


def header(s: Setup, env: dict[str, Any], ceiling: float) -> None:
    a = s.args
    print("env: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    print(f"config: {a.model} temporal={a.temporal}, B={a.batch} clips, {a.global_views}x{a.global_frames}x"
          f"{a.global_size}px global + {a.local_views}x{a.local_frames}x{a.local_size}px local, precision "
          f"{s.precision}, compile backend {a.backend}, augment={'on' if a.augment else 'off (ready-made views)'}")
    print(f"matmul ceiling ({'bf16' if s.device.type == 'cuda' else 'fp32'}, measured): {ceiling / 1e12:.2f} TFLOP/s")


def summarise(rows: list[dict[str, Any]]) -> dict[str, float]:
    """ours / baseline ratios of the best variant of ours against the eager baseline."""
    ours = [r for r in rows if not r["variant"].startswith("baseline") and r.get("check_ok") and "clips_s" in r]
    base = next((r for r in rows if r["variant"] == "baseline" and "clips_s" in r), None)
    if not ours or base is None:
        return {}
    best = max(ours, key=lambda r: r["clips_s"])
    return {"best": best["variant"], "clips_ratio": best["clips_s"] / base["clips_s"], "mfu_ratio": best["mfu"] / base["mfu"]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args._profiled = False
    from lss_cli.runtime.device import resolve_device

    device = resolve_device(args.device)
    s = build_setup(args, device)
    variants = resolve_variants(args, device)
    env = environment(device)
    ceiling = matmul_ceiling(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    header(s, env, ceiling)
    flops, ops = count_ours(s)
    base_flops, base_ops = count_baseline(s) if args.baseline or args.baseline_compile or args.count_only \
        else (None, {})
    print(f"FLOPs per clip (FlopCounterMode, fwd+bwd, model FLOPs): ours {flops / args.batch / 1e12:.4f} TFLOP"
          + (f", frame-wise baseline {base_flops / args.batch / 1e12:.4f} TFLOP" if base_flops else ""))
    results: dict[str, Any] = {
        "env": env, "args": {k: v for k, v in vars(args).items() if not k.startswith("_")}, "ceiling_flops": ceiling,
        "flops_per_step": flops, "flops_by_op": ops, "baseline_flops_per_step": base_flops,
        "baseline_flops_by_op": base_ops, "rows": []}
    if args.count_only:
        print_flop_breakdown(ops, base_ops, args.batch)
        write_json(args.json, results)
        return 0
    results["reference_losses"], results["fp32_losses"] = ref, truth = run_reference(s) if variants else ([], [])
    rows = results["rows"]
    for v in variants:
        rows.append(guarded(v.name, device, lambda v=v: run_variant(s, v, flops, ceiling, ref, truth)))
        _report_row(rows[-1])
        write_json(args.json, results)  # a phase cut short by its time limit keeps what it measured
    if base_flops is not None:
        for row in run_baseline(s, base_flops, ceiling):
            rows.append(row)
            _report_row(row)
            write_json(args.json, results)
    if rows:
        print()
        print_table(rows, COLUMNS)
    results["summary"] = summary = summarise(rows)
    if summary:
        print(f"\nours/baseline ({summary['best']} vs eager baseline): clips/s x{summary['clips_ratio']:.2f}, "
              f"MFU x{summary['mfu_ratio']:.2f}")
    if args.sdpa_check:
        results["sdpa"], results["sdpa_kernels"] = sdpa, kernels = sdpa_check(s)
        print(f"\nSDPA backends, forward+backward of each attention call of the step (B={max(1, args.batch // 4)}):")
        print_table(sdpa, SDPA_COLUMNS)
        print(f"the default dispatch ran: {kernels}")
    if args.sync_debug:
        syncs = sync_debug(s)
        if syncs is not None:
            results["host_syncs"] = syncs
    write_json(args.json, results)
    return 0 if all(r.get("check_ok") is not False for r in rows) else 1


def _report_row(row: dict[str, Any]) -> None:
    row.setdefault("check", {True: "ok", False: "FAIL", None: "-"}[row.get("check_ok")])
    if "clips_s" in row:
        print(f"{row['variant']}: {row['clips_s']:.1f} clips/s, MFU {row['mfu']:.1%}, check {row['check']}",
              file=sys.stderr)
    _print_check(row)


def _print_check(row: dict[str, Any]) -> None:
    if row.get("check_ok") is False:
        print(f"CHECK FAILED for {row['variant']}: {row['check_msg']}", file=sys.stderr)
    if isinstance(row.get("compiled"), str) and row["compiled"] != "yes":
        print(f"note: {row['variant']}: torch.compile {row['compiled']} (timed in eager mode)", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

"""The train-step benchmark's arguments, and what every variant of our step is built from.

`build_setup` makes the shared starting point: a TrainConfig for the benchmark's view sizes, a
random-init CLIP and a random concept bank (K=530, M=5300 unit rows), and two input sets
(normalised float views already on the device, or with --augment pinned uint8 batches that the
production augmentation turns into views inside the step). `make_trainer` builds a variant's step
through the production builder (`lss_cli.train.build.build_components`), from the same seed, so
every variant starts from the same weights; `ours_step_fn` runs the production `train_step` on it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from lss_cli.config import TrainConfig
from lss_cli.data.augment import make_train_views
from lss_cli.models.clip import Clip, load_clip
from lss_cli.train.build import Components, build_components
from lss_cli.train.step import Views, train_step

SCHEDULE_ITERS = 100_000  # steps per "epoch" of the schedules: longer than any benchmark, only indexed


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
    p = argparse.ArgumentParser(prog="train_step.py",
                                description="Time the full LSS self-distillation step against a frame-wise "
                                            "open_clip baseline, in one run.")
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
                   help="also time the baseline with torch.compile (reference: 101 clips/s on an H200)")
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


def with_args(args: argparse.Namespace, **changes: Any) -> argparse.Namespace:
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
    """The autocast every step runs under: "bf16" or "fp32" (auto: bf16 on CUDA, as training)."""
    if args.dtype == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return args.dtype


# --------------------------------------------------------------------------------------------
# The starting point, the inputs, and our step
# --------------------------------------------------------------------------------------------


def random_bank(num_categories: int, num_descriptions: int, dim: int, seed: int) -> dict[str, torch.Tensor]:
    """Unit rows; description m belongs to category m mod K (10 each for 530 / 5300)."""
    g = torch.Generator().manual_seed(seed)
    return {"category": F.normalize(torch.randn(num_categories, dim, generator=g), dim=-1),
            "description": F.normalize(torch.randn(num_descriptions, dim, generator=g), dim=-1),
            "description_owner": torch.arange(num_descriptions) % num_categories}


@dataclass
class Setup:
    """What every variant starts from, the inputs, and the fixed numbers."""

    args: argparse.Namespace
    device: torch.device
    precision: str  # "bf16" | "fp32"
    cfg: TrainConfig
    clip: Clip  # random init
    bank: dict[str, torch.Tensor]  # random unit rows
    inputs: list[Any]  # rotated per step: (global, local) float views or uint8 loader-like batches

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None

    def augment(self, batch: dict[str, torch.Tensor], step: int, device: torch.device) -> Views:
        """The production augmentation (pinned uint8 views -> augmented float views on the device),
        seeded per step."""
        g = torch.Generator().manual_seed(self.args.seed * 1_000_003 + step)
        return make_train_views(batch, self.cfg.views, self.clip.mean, self.clip.std, device, generator=g)


def build_setup(args: argparse.Namespace, device: torch.device) -> Setup:
    cfg = TrainConfig()
    cfg.model.name, cfg.model.pretrained, cfg.model.temporal = args.model, None, args.temporal
    cfg.model.num_frames = args.global_frames
    cfg.data.batch_size = args.batch  # one micro-batch per step, one rank: the lrs scale by batch / 256
    cfg.optim.warmup_epochs = 0.0  # peak lr from step 0, so the check steps exercise the update
    cfg.views.global_views, cfg.views.global_frames, cfg.views.global_size = (
        args.global_views, args.global_frames, args.global_size)
    cfg.views.local_views, cfg.views.local_frames, cfg.views.local_size = (
        args.local_views, [args.local_frames], args.local_size)
    clip = load_clip(args.model, None, seed=args.seed)
    bank = random_bank(530, 5300, clip.embed_dim, args.seed)
    inputs = [make_inputs(args, device, seed=args.seed + 1 + i) for i in range(2)]
    return Setup(args, device, precision_of(args, device), cfg, clip, bank, inputs)


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


def make_trainer(s: Setup, variant: Variant, device: torch.device | None = None,
                 optimizer: str = "adamw") -> Components:
    """The production components of one variant, on `device` (default s.device), from the same
    initial weights as every other variant.

    `optimizer="sgd"` is for FLOP counting on meta tensors (AdamW reads its step count on the host).
    """
    device = device or s.device
    cfg = replace(s.cfg, model=replace(s.cfg.model, compile=variant.compile, grad_checkpointing=variant.ckpt))
    torch.manual_seed(s.args.seed)  # the temporal layers' init: the same for every variant
    options = {"backend": s.args.backend} | ({"mode": variant.mode} if variant.mode else {})
    c = build_components(cfg, s.clip, s.bank, device, iters_per_epoch=SCHEDULE_ITERS, compile_options=options)
    c.autocast_dtype = None if device.type == "meta" else s.autocast_dtype  # autocast means nothing on meta
    if optimizer == "sgd":
        groups = c.student_raw.param_groups(cfg.optim.lr, cfg.optim.temporal_lr, cfg.optim.weight_decay)
        c.optimizer = torch.optim.SGD(groups, lr=0.0)
    return c


def ours_step_fn(s: Setup, c: Components, variant: Variant):
    """step(i) -> loss parts: one production train_step on input set i mod 2."""

    def step(i: int) -> dict[str, torch.Tensor]:
        batch = s.inputs[i % len(s.inputs)]
        if s.args.augment:
            make_views = lambda b, m: s.augment(b, i, s.device)  # noqa: E731
        else:
            make_views = lambda b, m: b  # noqa: E731 - ready-made device views
        if variant.mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # a training loop marks each iteration
        return train_step(c, [batch], i, make_views=make_views)

    return step

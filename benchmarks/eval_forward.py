"""Time feature extraction (the evaluation forward pass): our video encoder, eager vs compiled.

The forward is what `lss eval` runs per batch (`lss_cli.eval.forward.EvalForward`, called by
`lss_cli.eval.features`): `encoder.encode(video [B, T, 3, S, S])` at a fixed batch shape, guarded
`torch.compile` (on by default on CUDA), under `torch.inference_mode()` and bf16 autocast on CUDA
(fp32 on CPU), here on random weights and synthetic views already on the device (decoding
excluded). In the same run: the frame-wise open_clip forward (the CLIP frame-average baseline),
a matmul ceiling, and FLOPs per clip counted with `torch.utils.flop_counter.FlopCounterMode`.
The compiled output is checked against the eager one (and, under bf16, against fp32) first.

    python benchmarks/eval_forward.py --tiny                 # CPU, lss-tiny
    python benchmarks/eval_forward.py                        # CUDA: ViT-B-16, 8 x 224, B=64 clips
    python benchmarks/eval_forward.py --variants eager,compile,compile-max --json out.json
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from contextlib import nullcontext
from typing import Any

import torch
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

MODES = {"eager": None, "compile": "default", "compile-max": "max-autotune-no-cudagraphs",
         "compile-cg": "reduce-overhead"}
TINY = {"model": "lss-tiny", "batch": 8, "frames": 4, "size": 64, "backend": "aot_eager", "steps": 3, "repeats": 3}
FULL = {"model": "ViT-B-16", "batch": 64, "frames": 8, "size": 224, "backend": "inductor", "steps": 10, "repeats": 3}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="lss-tiny, small clips (CPU smoke run)")
    p.add_argument("--model")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, help="clips per forward [64; 8 with --tiny]")
    p.add_argument("--frames", type=int)
    p.add_argument("--size", type=int)
    p.add_argument("--temporal", choices=("divided", "mean"), default="divided")
    p.add_argument("--variants", default="eager,compile", help="comma-separated: " + ", ".join(MODES))
    p.add_argument("--backend", help="torch.compile backend [inductor; aot_eager with --tiny]")
    p.add_argument("--steps", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the frame-wise open_clip forward")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json")
    args = p.parse_args(argv)
    for key, value in (TINY if args.tiny else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    unknown = [v for v in args.variants.split(",") if v not in MODES]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {', '.join(MODES)}")
    return args


def build(args: argparse.Namespace) -> tuple[Any, torch.nn.Module, torch.nn.Module]:
    """(clip, our encoder, the frame-wise baseline) on the CPU, random weights."""
    from framewise import FramewiseClip

    from lss_cli.config import ModelConfig
    from lss_cli.models.clip import load_clip
    from lss_cli.models.video import build_video_encoder

    clip = load_clip(args.model, None, seed=args.seed)
    torch.manual_seed(args.seed)
    encoder = build_video_encoder(clip, ModelConfig(name=args.model, temporal=args.temporal, num_frames=args.frames))
    _perturb_temporal(encoder, args.seed)
    baseline = FramewiseClip({clip.image_size: copy.deepcopy(clip.model.visual).float()})
    return clip, encoder.eval(), baseline.eval()


def _perturb_temporal(encoder: torch.nn.Module, seed: int) -> None:
    """Give the zero-initialised temporal layers trained-like values, so the check compares a real
    temporal computation (at zero they are the identity and a wrong graph could hide there)."""
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for p in encoder.temporal_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)


def forward_fn(model, video: torch.Tensor, device: torch.device, fp32: bool = False):
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and not fp32 else nullcontext()

    def run(_: int = 0) -> torch.Tensor:
        with torch.inference_mode(), autocast:
            return model(video)

    return run


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.float() - ref.float()).norm() / ref.float().norm())


def measure(name: str, model, video: torch.Tensor, args, device, flops: int, ceiling: float,
            ref: torch.Tensor | None, tol: float) -> dict[str, Any]:
    run = forward_fn(model, video, device)
    row: dict[str, Any] = {"variant": name}
    tic = time.perf_counter()
    out = run()
    sync(device)
    row["first_s"] = time.perf_counter() - tic
    if ref is not None:
        row["rel_err"] = rel_err(out, ref)
        row["check"] = "ok" if row["rel_err"] <= tol else "FAIL"
    with peak_memory(device) as mem:
        t = time_blocks(run, device, calls=args.steps, repeats=args.repeats, warmup=args.warmup)
    row.update(step_s=t["median_s"], clips_s=args.batch / t["median_s"], frames_s=args.batch * args.frames / t["median_s"],
               gflop_clip=flops / args.batch / 1e9, mfu=flops / t["median_s"] / ceiling, peak_gib=mem["peak_gib"])
    return row


def production_forward(encoder, mode: str | None, batch: int, backend: str):
    """What `lss eval` runs: `lss_cli.eval.forward.EvalForward` (fixed batch, guarded compile)."""
    from lss_cli.eval.forward import EvalForward

    kw = {"backend": backend} | ({"mode": mode} if mode not in (None, "default") else {})
    return EvalForward(encoder, "proj", batch, compile=mode is not None, **kw)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from lss_cli.runtime.device import resolve_device

    device = resolve_device(args.device)
    clip, encoder, baseline = build(args)
    shape = (args.batch, args.frames, 3, args.size, args.size)
    count_video = torch.empty(shape, device="meta")
    flops = count_flops(lambda: copy.deepcopy(encoder).to("meta")(count_video))[0]
    base_flops = count_flops(lambda: copy.deepcopy(baseline).to("meta")(count_video))[0]
    encoder, baseline = encoder.to(device), baseline.to(device)
    video = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed + 1)).to(device)
    precision = "bf16" if device.type == "cuda" else "fp32"
    ceiling = matmul_ceiling(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    env = environment(device)
    print("env: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    print(f"config: {args.model} temporal={args.temporal}, B={args.batch} clips x {args.frames} x {args.size}px, "
          f"{precision}, inference_mode, compile backend {args.backend}")
    print(f"matmul ceiling ({precision}, measured): {ceiling / 1e12:.2f} TFLOP/s; GFLOP per clip (forward): "
          f"ours {flops / args.batch / 1e9:.1f}, frame-wise {base_flops / args.batch / 1e9:.1f}")
    ref = forward_fn(encoder, video, device)()
    truth = forward_fn(encoder, video, device, fp32=True)()
    # bf16: within 1e-2 of fp32 or no farther than 2x the eager bf16 forward; fp32: 1e-5.
    tol = 1e-5 if precision == "fp32" else max(1e-2, 2 * rel_err(ref, truth))
    rows = []
    for name in args.variants.split(","):
        model = production_forward(encoder, MODES[name], args.batch, args.backend)
        rows.append(measure(name, model, video, args, device, flops, ceiling, truth, tol))
        torch._dynamo.reset()
    if args.baseline:
        rows.append(measure("frame-wise", baseline, video, args, device, base_flops, ceiling, None, tol))
    print()
    print_table(rows, [("variant", "variant", ""), ("step_s", "s/batch", ".4f"), ("clips_s", "clips/s", ".1f"),
                       ("frames_s", "frames/s", ".0f"), ("gflop_clip", "GFLOP/clip", ".1f"), ("mfu", "MFU", ".1%"),
                       ("peak_gib", "peak GiB", ".1f"), ("first_s", "first s", ".1f"), ("rel_err", "rel err", ".1e"),
                       ("check", "check", "")])
    write_json(args.json, {"env": env, "args": vars(args), "ceiling_flops": ceiling, "flops_per_batch": flops,
                           "baseline_flops_per_batch": base_flops, "tolerance": tol, "rows": rows})
    return 0 if all(r.get("check", "ok") == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

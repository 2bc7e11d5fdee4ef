"""Time the full LSS self-distillation step against a frame-wise open_clip baseline, in one run.

The step is the production `lss_cli.train.step.train_step` (teacher forward on the global views,
student forward/backward on all views, loss, gradient clipping, AdamW, EMA) on components made by
the production builder (`lss_cli.train.build`) from random weights and a random concept bank
(K=530, M=5300 unit rows). Views are synthetic tensors already on the device, so decoding (and,
unless --augment, augmentation) is excluded. In the same run: the frame-wise baseline step (open_clip image towers per frame for the
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

This file is the entry point (the run and its report); the pieces live beside it:
`train_step_setup` (arguments, the starting point, our step through `lss_cli.train.build`),
`framewise` (the baseline model and its step), `train_step_measure` (FLOPs, correctness, timing)
and `train_step_checks` (profile, SDPA backends, host syncs).
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from bench_utils import environment, matmul_ceiling, print_table, write_json
from train_step_checks import sdpa_check, sync_debug
from train_step_measure import count_baseline, count_ours, guarded, run_baseline, run_reference, run_variant
from train_step_setup import Setup, build_setup, parse_args, resolve_variants

from lss_cli.runtime.device import resolve_device

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

"""Collect the JSON files written by train_step.py / eval_forward.py (--json) into one Markdown table.

    python benchmarks/results_table.py out/*.json > table.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TRAIN = [("variant", "variant", ""), ("step_s", "s/step", ".3f"), ("clips_s", "clips/s", ".1f"),
         ("frames_s", "frames/s", ".0f"), ("gflop_clip", "GFLOP/clip", ".0f"), ("mfu", "MFU", ".1%"),
         ("peak_gib", "peak GiB", ".1f"), ("gib_clip", "GiB/clip", ".2f"), ("first_steps_s", "first s", ".0f"),
         ("check", "check", ""), ("compiled", "compiled", "")]
EVAL = [("variant", "variant", ""), ("step_s", "s/batch", ".3f"), ("clips_s", "clips/s", ".1f"),
        ("frames_s", "frames/s", ".0f"), ("gflop_clip", "GFLOP/clip", ".1f"), ("mfu", "MFU", ".1%"),
        ("peak_gib", "peak GiB", ".1f"), ("first_s", "first s", ".0f"), ("rel_err", "rel err", ".1e"),
        ("check", "check", "")]


def cell(value, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str) or not spec:
        return str(value)
    return format(value, spec)


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> list[str]:
    out = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        out.append("| " + " | ".join(cell(r.get(k), s) for k, _, s in columns) + " |")
        if r.get("error"):
            out.append(f"| ^ {r['error']} |")
    return out


def describe(path: Path, d: dict) -> list[str]:
    a, env = d.get("args", {}), d.get("env", {})
    device = env.get("gpu") or env.get("cpu")
    lines = [f"### {path.stem}", "",
             f"{device}, torch {env.get('torch')}, CUDA {env.get('cuda', '-')}, {env.get('date')}; matmul ceiling "
             f"{d.get('ceiling_flops', 0) / 1e12:.0f} TFLOP/s" if d.get("ceiling_flops", 0) >= 1e12 else
             f"{device}, torch {env.get('torch')}, {env.get('date')}; matmul ceiling "
             f"{d.get('ceiling_flops', 0) / 1e12:.3f} TFLOP/s"]
    if "flops_per_batch" in d:
        lines.append(f"eval forward: {a.get('model')} {a.get('temporal')}, B={a.get('batch')} x {a.get('frames')} x "
                     f"{a.get('size')}px, backend {a.get('backend')}")
        return lines + [""] + table(d.get("rows", []), EVAL)
    lines.append(f"train step: {a.get('model')} {a.get('temporal')}, B={a.get('batch')}, {a.get('global_views')}x"
                 f"{a.get('global_frames')}x{a.get('global_size')}px + {a.get('local_views')}x{a.get('local_frames')}x"
                 f"{a.get('local_size')}px, augment={a.get('augment')}, backend {a.get('backend')}")
    lines += [""] + table(d.get("rows", []), TRAIN)
    s = d.get("summary") or {}
    if s:
        lines += ["", f"ours/baseline ({s['best']} vs eager baseline): clips/s x{s['clips_ratio']:.2f}, "
                      f"MFU x{s['mfu_ratio']:.2f}"]
    if d.get("sdpa"):
        lines += ["", "SDPA backends (forward+backward per attention call of the step, B/4 clips):", ""]
        lines += table(d["sdpa"], [("shape", "call [N, heads, seq, dim]", ""), ("backend", "backend", ""),
                                   ("ms", "ms", ".2f"), ("tflops", "TFLOP/s", ".1f"), ("error", "error", "")])
        lines += ["", f"default dispatch ran: {d.get('sdpa_kernels')}"]
    if "host_syncs" in d:
        lines += ["", "host syncs per step:", ""]
        lines += table(d["host_syncs"], [("site", "call site", ""), ("per_step", "per step", ".1f")])
    return lines


def main(paths: list[str]) -> int:
    for p in map(Path, paths):
        if not p.exists():  # a phase that was skipped
            continue
        try:
            d = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            print(f"### {p.stem}\n\nunreadable: {e}\n")
            continue
        print("\n".join(describe(p, d)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

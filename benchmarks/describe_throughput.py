"""Throughput of `lss describe`: all lss530 classes against a local OpenAI-compatible server.

The server (tests/fake_llm.py, in this process) answers every request after a fixed latency
(200 ms by default) with realistic-length descriptions (~90 characters, so the exact CLIP token
check runs). The real CLI runs in a subprocess with the real openai client, as a user would run it.

Old and new in the same run, interleaved, `--repeats` times each: *open_clip* counts tokens as
`lss describe` did before (open_clip's tokenizer through `lss_cli.models.clip`, imported on the
first long reply: torch and open_clip, seconds), *bpe* as it does now (`lss_cli.describe.bpe`,
no torch). Prints the wall time of the whole command (medians), the ideal and the ratios.

    python benchmarks/describe_throughput.py [--concurrency 16] [--latency 0.2] [--per-class 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fake_llm import FakeLLM  # noqa: E402

PARTS = ("with both arms moving in a steady rhythm", "in a bright indoor space with a wooden floor",
         "while holding the equipment firmly in the hands", "outdoors on a sunny day near some trees",
         "with knees bending and the torso leaning forward")

# Runs the CLI as `python -m lss_cli` does; for "open_clip", with the token counter `lss describe`
# used before: open_clip's tokenizer, imported (with torch) the first time a reply needs counting.
LAUNCH = """
import runpy, sys
if sys.argv[1] == "open_clip":
    import lss_cli.describe.replies as replies

    def open_clip_counts(texts):
        from lss_cli.models.clip import clip_token_counts
        return clip_token_counts(texts)

    replies.clip_token_counts = open_clip_counts
sys.argv = ["lss"] + sys.argv[2:]
runpy.run_module("lss_cli", run_name="__main__")
"""


def realistic(category: str, i: int) -> str:
    return f"A person is {category} {PARTS[i % len(PARTS)]}, seen from angle {i + 1}."


def run_once(counter: str, server: FakeLLM, args: argparse.Namespace) -> tuple[float, dict, int]:
    """(wall seconds of the whole command, its JSON summary, records written)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "descriptions.jsonl"
        cmd = [sys.executable, "-c", LAUNCH, counter, "describe", "--labels", args.labels, "--out", str(out),
               "--base-url", server.base_url, "--concurrency", str(args.concurrency),
               "--per-class", str(args.per_class), "--quiet", "--json"]
        env = {**os.environ, "OPENAI_API_KEY": "benchmark-key", "HF_HUB_OFFLINE": "1"}
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            sys.exit(f"lss describe ({counter}) failed ({r.returncode}):\n{r.stderr}")
        return wall, json.loads(r.stdout), out.read_text().count("\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", default="lss530")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--latency", type=float, default=0.2, help="server seconds per reply")
    ap.add_argument("--per-class", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each variant (interleaved)")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    from lss_cli.describe.replies import surely_fits_clip  # noqa: PLC0415 -- after the path is set

    sample = [realistic("abseiling", i) for i in range(args.per_class)]
    counted = sum(not surely_fits_clip(t) for t in sample)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs; "
          f"{counted} of {len(sample)} descriptions of a class need the exact token count")
    walls: dict[str, list[float]] = {"open_clip": [], "bpe": []}
    inside: dict[str, list[float]] = {"open_clip": [], "bpe": []}
    with FakeLLM(per_class=args.per_class, delay=args.latency, describe=realistic) as server:
        for r in range(args.repeats):
            for counter in (("open_clip", "bpe") if r % 2 == 0 else ("bpe", "open_clip")):
                wall, s, lines = run_once(counter, server, args)
                walls[counter].append(wall)
                inside[counter].append(s["wall_s"])
    ideal = s["calls"] * args.latency / args.concurrency
    print(f"lss describe: {s['done']} classes ({lines} records), {s['calls']} requests, "
          f"concurrency {args.concurrency}, server latency {args.latency * 1000:.0f} ms, {args.repeats} runs each")
    print(f"ideal (requests x latency / concurrency): {ideal:.2f} s")
    med = {k: statistics.median(v) for k, v in walls.items()}
    for counter, label in (("open_clip", "before (open_clip count)"), ("bpe", "now (BPE, no torch)")):
        print(f"{label:25s} whole command median {med[counter]:.2f} s "
              f"({', '.join(f'{w:.2f}' for w in walls[counter])}); inside run_describe "
              f"{statistics.median(inside[counter]):.2f} s; {med[counter] / ideal:.2f}x the ideal; "
              f"{s['done'] / med[counter]:.1f} classes/s")
    print(f"RESULT: now {med['open_clip'] / med['bpe']:.2f}x faster; {med['bpe'] / ideal:.2f}x the ideal "
          f"(before {med['open_clip'] / ideal:.2f}x)")


if __name__ == "__main__":
    main()

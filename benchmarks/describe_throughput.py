"""Throughput of `lss describe`: all lss530 classes against a local OpenAI-compatible server.

The server (tests/fake_llm.py, in this process) answers every request after a fixed latency
(200 ms by default) with realistic-length descriptions (~90 characters, so the exact CLIP token
check runs). The real CLI runs in a subprocess with the real openai client, as a user would run it.

Three variants in the same run, interleaved, `--repeats` times each; each puts back one more of
the code `lss describe` had before:

- *now*: the code as it is;
- *probe queue*: after the first reply settled how requests are sent, the workers that queued
  behind that probe still sent one at a time, a full round trip each, before the pool filled;
- *open_clip*: that, and tokens counted with open_clip's tokenizer (through
  `lss_cli.models.clip`, imported with torch on the first long reply: seconds) instead of
  `lss_cli.describe.bpe`.

Prints the wall time of the whole command (medians), the ideal and the ratios.

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

# Runs the CLI as `python -m lss_cli` does, after putting back the old code the variant names
# (sys.argv[1]: comma-separated, or "now").
LAUNCH = """
import contextlib, runpy, sys
old = set(sys.argv[1].split(","))
if "probe_queue" in old:
    import lss_cli.describe.calls as calls

    @contextlib.contextmanager
    def turn(self):  # RequestAdapter.turn as it was: a worker that waited for the probe kept the lock
        if self._settled.is_set():
            yield self.shape
            return
        with self._probe:
            yield self.shape

    calls.RequestAdapter.turn = turn
if "open_clip" in old:
    import lss_cli.describe.replies as replies

    def open_clip_counts(texts):
        from lss_cli.models.clip import clip_token_counts
        return clip_token_counts(texts)

    replies.clip_token_counts = open_clip_counts
sys.argv = ["lss"] + sys.argv[2:]
runpy.run_module("lss_cli", run_name="__main__")
"""

# variant -> (the old code it puts back, label)
VARIANTS = {
    "open_clip": ("open_clip,probe_queue", "before: open_clip count, probe queue"),
    "probe_queue": ("probe_queue", "BPE count, probe queue"),
    "now": ("now", "now: BPE count, pool fills at once"),
}


def realistic(category: str, i: int) -> str:
    return f"A person is {category} {PARTS[i % len(PARTS)]}, seen from angle {i + 1}."


def run_once(variant: str, server: FakeLLM, args: argparse.Namespace) -> tuple[float, dict, int]:
    """(wall seconds of the whole command, its JSON summary, records written)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "descriptions.jsonl"
        cmd = [sys.executable, "-c", LAUNCH, VARIANTS[variant][0], "describe", "--labels", args.labels, "--out", str(out),
               "--base-url", server.base_url, "--concurrency", str(args.concurrency),
               "--per-class", str(args.per_class), "--quiet", "--json"]
        env = {**os.environ, "OPENAI_API_KEY": "benchmark-key", "HF_HUB_OFFLINE": "1"}
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            sys.exit(f"lss describe ({variant}) failed ({r.returncode}):\n{r.stderr}")
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
    walls: dict[str, list[float]] = {v: [] for v in VARIANTS}
    inside: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with FakeLLM(per_class=args.per_class, delay=args.latency, describe=realistic) as server:
        for r in range(args.repeats):
            order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
            for variant in order:
                wall, s, lines = run_once(variant, server, args)
                walls[variant].append(wall)
                inside[variant].append(s["wall_s"])
    ideal = s["calls"] * args.latency / args.concurrency
    print(f"lss describe: {s['done']} classes ({lines} records), {s['calls']} requests, "
          f"concurrency {args.concurrency}, server latency {args.latency * 1000:.0f} ms, {args.repeats} runs each")
    print(f"ideal (requests x latency / concurrency): {ideal:.2f} s")
    med = {k: statistics.median(v) for k, v in walls.items()}
    for variant, (_, label) in VARIANTS.items():
        print(f"{label:38s} whole command median {med[variant]:.2f} s "
              f"({', '.join(f'{w:.2f}' for w in walls[variant])}); inside run_describe "
              f"{statistics.median(inside[variant]):.2f} s; {med[variant] / ideal:.2f}x the ideal; "
              f"{s['done'] / med[variant]:.1f} classes/s")
    print(f"RESULT: now {med['now'] / ideal:.2f}x the ideal; {med['probe_queue'] / med['now']:.2f}x faster than "
          f"with the probe queue ({med['probe_queue'] / ideal:.2f}x), {med['open_clip'] / med['now']:.2f}x than "
          f"before ({med['open_clip'] / ideal:.2f}x)")

if __name__ == "__main__":
    main()

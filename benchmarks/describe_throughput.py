"""Throughput of `lss describe`: all lss530 classes against a local OpenAI-compatible server.

The server (tests/fake_llm.py, in this process) answers every request after a fixed latency
(200 ms by default) with realistic-length descriptions (~90 characters, so the exact CLIP token
check runs, open_clip import included). The real CLI runs in a subprocess with the real openai
client, as a user would run it. Prints the wall time of the whole command and the rate.

    python benchmarks/describe_throughput.py [--concurrency 16] [--latency 0.2] [--per-class 10]
"""

from __future__ import annotations

import argparse
import json
import os
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


def realistic(category: str, i: int) -> str:
    return f"A person is {category} {PARTS[i % len(PARTS)]}, seen from angle {i + 1}."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", default="lss530")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--latency", type=float, default=0.2, help="server seconds per reply")
    ap.add_argument("--per-class", type=int, default=10)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp, \
            FakeLLM(per_class=args.per_class, delay=args.latency, describe=realistic) as server:
        out = Path(tmp) / "descriptions.jsonl"
        cmd = [sys.executable, "-m", "lss_cli", "describe", "--labels", args.labels, "--out", str(out),
               "--base-url", server.base_url, "--concurrency", str(args.concurrency),
               "--per-class", str(args.per_class), "--quiet", "--json"]
        env = {**os.environ, "OPENAI_API_KEY": "benchmark-key", "HF_HUB_OFFLINE": "1"}
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            sys.exit(f"lss describe failed ({r.returncode}):\n{r.stderr}")
        s = json.loads(r.stdout)
        lines = out.read_text().count("\n")
    ideal = s["calls"] * args.latency / args.concurrency
    print(f"lss describe: {s['done']} classes ({lines} records), {s['calls']} requests, "
          f"concurrency {args.concurrency}, server latency {args.latency * 1000:.0f} ms")
    print(f"wall time (whole command, process start to exit): {wall:.2f} s")
    print(f"wall time (inside run_describe):                  {s['wall_s']:.2f} s")
    print(f"ideal (requests x latency / concurrency):         {ideal:.2f} s")
    print(f"rate: {s['done'] / wall:.1f} classes/s")


if __name__ == "__main__":
    main()

"""Time one save and one load of the evaluation feature cache (`lss_cli.eval.cache.FeatureCache`).

A save rewrites the whole file (temp + os.replace), so its cost sets how often extraction can
checkpoint (`SAVE_EVERY_S`). Default size: Kinetics-400 val, 20,000 videos x 3 views x 512 floats.

    python benchmarks/cache_save.py                         # 20,000 x 3 x 512, in a temp dir
    python benchmarks/cache_save.py --videos 1000 --dir /mnt/scratch --json out.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_utils import environment, write_json

from lss_cli.eval.cache import FeatureCache


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=20_000)
    p.add_argument("--views", type=int, default=3)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", help="where to write the cache (default: a temp dir)")
    p.add_argument("--json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        cache = FeatureCache(tmp, {"bench": True})
        feats = torch.randn(args.videos, args.views, args.dim)  # [N, V, D]
        for i in range(args.videos):
            # Paths that do not exist: stamped "missing", which is all a save needs.
            cache.add(f"{tmp}/videos/class_{i % 400:03d}/video_{i:06d}.mp4", feats[i], True, "")
        saves, loads = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            cache.save()
            saves.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            loaded = FeatureCache(tmp, {"bench": True})
            loads.append(time.perf_counter() - t0)
            assert len(loaded.entries) == args.videos
        size = Path(cache.path).stat().st_size
    row = {"videos": args.videos, "views": args.views, "dim": args.dim, "file_mb": round(size / 1e6, 1),
           "save_s": round(statistics.median(saves), 6), "load_s": round(statistics.median(loads), 6)}
    env = environment(torch.device("cpu"))
    print(f"{env['cpu']} ({env['cpu_cores']} cores), torch {env['torch']}")
    print(" ".join(f"{k}={v}" for k, v in row.items()))
    if args.json:
        write_json(args.json, {"environment": env, "rows": [row]})
    return 0


if __name__ == "__main__":
    sys.exit(main())

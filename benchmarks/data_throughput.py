"""Data pipeline throughput: self-distillation samples/s and eval clips/s, against a naive baseline.

Generates clips (cached in --out):
- `mp4-340x256`, `mp4-640x360`: Kinetics-like, 10 s at 30 fps, H.264 (x264, crf 23, a keyframe
  every 60 frames = 2 s), a textured scene with a camera pan, a moving object and sensor noise;
- `avi-320x240`: UCF101-like, 7 s at 25 fps, MPEG-4 Part 2 in AVI (what torchcodec's encoder
  writes for .avi here; UCF101 ships XviD, also MPEG-4 Part 2);
- `mp4-short-340x256`: 12 frames (1 s at 12 fps), evaluated with 4 clips x 3 crops of 8 frames,
  so frames repeat across views.

Measures, with DataLoader workers = 1, 2 and all cores:
- train: decoded + cropped/resized self-distillation samples/s (2 global x 8 frames at 224 + 8 local
  x 8 frames at 96, the `views` defaults, docs/method.md §2), three pipelines run interleaved
  (`--repeats` rounds, medians): `new` = `lss_cli.data.loader.TrainClips` (union of all views'
  indices in one `get_frames_at`, default `data.seek_mode`; each view's rows gathered with
  `index_select` and resized into its slot of the sample), `old` = the sample code before the
  CPU-side speed work (frozen here: `crop[rows]`, a copy per view, `torch.stack`), and naive
  (decode the whole video, then index; the old crop code, as first measured);
- eval: clips/s of 8-frame single views (segment centres, short side 224 bicubic, centre crop;
  4 clips x 3 crops for the short kind): `EvalClips` (exact seek) vs naive (decode everything,
  copy out every view's frames, resize each);
- a one-core breakdown of a training sample in CPU time (load-independent, interleaved, medians):
  decode (exact and approximate seek; naive: every frame), crop/resize old vs new, and the
  per-sample totals and ratios they imply; and the cost of the on-device augmentation when the
  device is this CPU (on a GPU it is a few ms per batch).

Run: `python benchmarks/data_throughput.py` (about 2 minutes on 2 cores, the first run also writes
the clips; --quick for a smoke run).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lss_cli.config import DataConfig, ViewsConfig  # noqa: E402
from lss_cli.data.augment import crop_resize, make_train_views  # noqa: E402
from lss_cli.data.datasets import VideoList  # noqa: E402
from lss_cli.data.loader import (  # noqa: E402
    EvalClips,
    EvalShardSampler,
    TrainClips,
    TrainShardSampler,
    collate_eval,
    collate_train,
)
from lss_cli.data.sampling import (  # noqa: E402
    local_frame_counts,
    multiview_indices,
    random_resized_crop_box,
)
from lss_cli.data.video_io import encode_video, num_frames, open_video, read_union  # noqa: E402

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Kind:
    name: str
    height: int
    width: int
    seconds: float
    fps: int
    suffix: str
    options: dict | None  # encoder options
    eval_views: tuple[int, int, int] = (8, 1, 1)  # eval frames per view, clips, crops


KINDS = {
    "mp4-340x256": Kind("mp4-340x256", 256, 340, 10, 30, ".mp4", {"g": 60}),
    "mp4-640x360": Kind("mp4-640x360", 360, 640, 10, 30, ".mp4", {"g": 60}),
    "avi-320x240": Kind("avi-320x240", 240, 320, 7, 25, ".avi", None),
    # A short clip evaluated with many views (4 clips x 3 crops of 8 frames from 12 frames): frames
    # repeat across views, which the eval path resizes once each.
    "mp4-short-340x256": Kind("mp4-short-340x256", 256, 340, 1, 12, ".mp4", {"g": 60}, (8, 4, 3)),
}


# ---- clip generation ------------------------------------------------------------------------


def render(kind: Kind, seed: int) -> torch.Tensor:
    """uint8 `[T, 3, H, W]`: a textured scene panned by the camera, a moving object, sensor noise."""
    g = torch.Generator().manual_seed(seed)
    H, W, T = kind.height, kind.width, int(kind.seconds * kind.fps)
    scene = sum(torch.nn.functional.interpolate(torch.rand(1, 3, H * 2 // c, W * 2 // c, generator=g),
                                                size=(H * 2, W * 2), mode="bicubic") * w
                for c, w in ((64, 0.6), (16, 0.25), (4, 0.15)))[0].clamp(0, 1)  # [3, 2H, 2W]
    colour = torch.rand(3, 1, 1, generator=g)
    frames = torch.empty(T, 3, H, W, dtype=torch.uint8)
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    for t in range(T):
        a = t / T
        y0 = int((H / 2) * (1 + math.sin(2 * math.pi * a + seed)))
        x0 = int((W / 2) * (1 + math.cos(1.3 * math.pi * a + seed)))
        f = scene[:, y0:y0 + H, x0:x0 + W].clone()
        cy, cx = H * (0.3 + 0.4 * a), W * (0.2 + 0.6 * abs(math.sin(3 * a + seed)))
        obj = ((ys - cy) / (0.15 * H)) ** 2 + ((xs - cx) / (0.1 * W)) ** 2 < 1
        f = torch.where(obj, colour, f)
        f = f + 0.012 * torch.randn(f.shape, generator=g)
        frames[t] = (f.clamp(0, 1) * 255).round().to(torch.uint8)
    return frames


def make_clips(out: Path, kind: Kind, count: int) -> list[Path]:
    paths = []
    for i in range(count):
        path = out / f"{kind.name}_{i:02d}{kind.suffix}"
        if not path.exists():
            tmp = path.with_name(f".tmp-{path.name}")
            encode_video(render(kind, i), tmp, fps=kind.fps, crf=23, extra_options=kind.options)
            os.replace(tmp, path)
        paths.append(path)
    return paths


def describe(paths: list[Path]) -> str:
    dec = open_video(paths[0], seek_mode="exact")
    md = dec.metadata
    keys = dec._get_key_frame_indices().tolist() if hasattr(dec, "_get_key_frame_indices") else []
    gop = f", keyframe every {keys[1] - keys[0]} frames" if len(keys) > 1 else ""
    seconds = num_frames(dec) / float(md.average_fps)
    kbps = sum(p.stat().st_size for p in paths) * 8 / 1000 / seconds / len(paths)
    return f"{md.codec}, {md.width}x{md.height}, {num_frames(dec)} frames @ {md.average_fps:g} fps{gop}, {kbps:.0f} kb/s"


# ---- naive baseline -------------------------------------------------------------------------


def naive_read_union(path, pick, *, seek_mode="exact", timeout=None, device="cpu", strict=False):
    """Decode the whole video; the views index into all of it."""
    dec = open_video(path, seek_mode=seek_mode)
    frames = dec.get_frames_in_range(0, num_frames(dec)).data  # [N, 3, H, W]
    return frames, pick(len(frames))


def naive_read_selected(path, pick, *, seek_mode="exact", timeout=None, device="cpu", strict=False):
    """Decode the whole video, then copy out every view's frames (repeats included) for the
    caller to resize one by one."""
    frames, views = naive_read_union(path, pick, seek_mode=seek_mode)
    rows = torch.cat(views)
    return frames[rows], list(torch.arange(len(rows)).split([len(v) for v in views]))


def old_crop_resize(frames, box, size, rows=None):
    """`crop_resize` before the CPU-side speed work: advanced indexing on the strided crop, then a
    contiguous copy of each view (the pixels are the same; tests/test_decode_speed.py)."""
    top, left, h, w = box
    crop = frames[:, :, top:top + h, left:left + w]
    if rows is not None:
        crop = crop[rows]
    out = torch.nn.functional.interpolate(crop.contiguous(memory_format=torch.channels_last), size=(size, size),
                                          mode="bicubic", antialias=True, align_corners=False)
    return out.contiguous()


class OldTrainClips(TrainClips):
    """The training sample code before the CPU-side speed work (frozen copy)."""

    def _read(self, index, g):
        v = self.views
        frames, positions = self.reader(self.videos.path(index), lambda n: multiview_indices(n, v, g).all(),
                                        seek_mode=self.data_cfg.seek_mode, timeout=self.data_cfg.decode_timeout)
        h, w = frames.shape[-2:]
        out = []
        for i, rows in enumerate(positions):
            is_global = i < v.global_views
            scale, size = (v.global_scale, v.global_size) if is_global else (v.local_scale, v.local_size)
            out.append(old_crop_resize(frames, random_resized_crop_box(h, w, scale, generator=g), size, rows))
        glob = torch.stack(out[: v.global_views])
        local = out[v.global_views:]
        counts = local_frame_counts(v)
        if len(set(counts)) <= 1:
            local = torch.stack(local) if local else torch.zeros(0, counts[0] if counts else v.global_frames, 3,
                                                                 v.local_size, v.local_size, dtype=torch.uint8)
        return glob, local


class NaiveTrainClips(OldTrainClips):
    reader = staticmethod(naive_read_union)


class NaiveEvalClips(EvalClips):
    reader = staticmethod(naive_read_selected)


# ---- measurement ----------------------------------------------------------------------------


def rate(dataset, sampler, collate, batch_size: int, workers: int, samples: int) -> float:
    """Samples/s after the first batch (worker start-up excluded)."""
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate, num_workers=workers,
                        prefetch_factor=2 if workers else None)
    it = iter(loader)
    next(it)
    n, t0 = 0, time.perf_counter()
    for batch in it:
        n += len(batch["index"])
        if n >= samples:
            break
    elapsed = time.perf_counter() - t0
    del it
    return n / elapsed


TRAIN_PIPELINES = {"new": TrainClips, "old": OldTrainClips, "naive": NaiveTrainClips}


def train_rate(paths, pipeline: str, workers: int, samples: int, batch_size: int) -> float:
    videos = VideoList("/", [str(p) for p in paths] * 64, [-1] * (64 * len(paths)), [])
    cls = TRAIN_PIPELINES[pipeline]
    dataset = cls(videos, DataConfig(), ViewsConfig(), seed=0)  # the default seek mode (exact)
    sampler = TrainShardSampler(len(videos), seed=0)
    return rate(dataset, sampler, collate_train, batch_size, workers, samples)


def eval_rate(paths, naive: bool, workers: int, samples: int, batch_size: int,
              views: tuple[int, int, int] = (8, 1, 1)) -> float:
    videos = VideoList("/", [str(p) for p in paths] * 64, [-1] * (64 * len(paths)), [])
    cls = NaiveEvalClips if naive else EvalClips
    frames, clips, crops = views
    dataset = cls(videos, num_frames=frames, num_clips=clips, num_crops=crops, image_size=224, seek_mode="exact",
                  decode_timeout=60.0)
    return rate(dataset, EvalShardSampler(len(videos)), collate_eval, batch_size, workers, samples)


def _crop_old(frames, positions, views: ViewsConfig, g: torch.Generator) -> None:
    h, w = frames.shape[-2:]
    out = []
    for i, rows in enumerate(positions):
        glob = i < views.global_views
        box = random_resized_crop_box(h, w, views.global_scale if glob else views.local_scale, generator=g)
        out.append(old_crop_resize(frames, box, views.global_size if glob else views.local_size, rows))
    torch.stack(out[: views.global_views]), torch.stack(out[views.global_views:])


def _crop_new(frames, positions, views: ViewsConfig, g: torch.Generator) -> None:
    h, w = frames.shape[-2:]
    glob = torch.empty(views.global_views, views.global_frames, 3, views.global_size, views.global_size, dtype=torch.uint8)
    local = torch.empty(views.local_views, local_frame_counts(views)[0], 3, views.local_size, views.local_size,
                        dtype=torch.uint8)
    for i, rows in enumerate(positions):
        is_global = i < views.global_views
        box = random_resized_crop_box(h, w, views.global_scale if is_global else views.local_scale, generator=g)
        crop_resize(frames, box, views.global_size if is_global else views.local_size, rows,
                    out=glob[i] if is_global else local[i - views.global_views])


def _pick(n: int, views: ViewsConfig, seed: int) -> list[torch.Tensor]:
    return multiview_indices(n, views, torch.Generator().manual_seed(seed)).all()


def breakdown(paths, repeats: int) -> dict:
    """One core, no DataLoader, CPU time of this process (so other jobs' load barely moves it):
    ms per training sample in each step, the variants interleaved in every round, medians."""
    views = ViewsConfig()
    times: dict[str, list[float]] = {k: [] for k in ("decode_approximate", "decode_exact", "decode_naive", "crop_old",
                                                     "crop_new", "getitem_new", "getitem_old", "getitem_naive")}

    def timed(key, fn, *args, **kwargs):
        t0 = time.process_time()
        result = fn(*args, **kwargs)
        times[key].append(1000 * (time.process_time() - t0))
        return result

    for r in range(repeats):
        path = paths[r % len(paths)]
        pick = functools.partial(_pick, views=views, seed=r)
        timed("decode_approximate", read_union, path, pick, seek_mode="approximate")
        frames, positions = timed("decode_exact", read_union, path, pick, seek_mode="exact")
        timed("decode_naive", naive_read_union, path, pick)
        timed("crop_old", _crop_old, frames, positions, views, torch.Generator().manual_seed(r))
        timed("crop_new", _crop_new, frames, positions, views, torch.Generator().manual_seed(r))
    # The whole sample as a DataLoader worker builds it (`__getitem__`: decode thread, crops, views).
    videos = VideoList("/", [str(p) for p in paths], [-1] * len(paths), [])
    datasets = {name: cls(videos, DataConfig(), views, seed=0) for name, cls in TRAIN_PIPELINES.items()}
    for r in range(repeats):
        for name, dataset in datasets.items():
            timed(f"getitem_{name}", dataset.__getitem__, (r, r % len(paths)))
    med = {f"{k}_ms": statistics.median(v) for k, v in times.items()}
    med["sample_old_ms"] = med["decode_exact_ms"] + med["crop_old_ms"]
    med["sample_new_ms"] = med["decode_exact_ms"] + med["crop_new_ms"]
    med["sample_naive_ms"] = med["decode_naive_ms"] + med["crop_old_ms"]
    med["union_frames_of_300"] = len(torch.unique(torch.cat(multiview_indices(300, views, torch.Generator().manual_seed(0)).all())))
    return med


def augment_cost(batch_size: int = 4) -> float:
    """ms per sample of make_train_views with this CPU as the device (all threads)."""
    views = ViewsConfig()
    batch = {"global": torch.randint(0, 255, (batch_size, 2, 8, 3, 224, 224), dtype=torch.uint8),
             "local": torch.randint(0, 255, (batch_size, 8, 8, 3, 96, 96), dtype=torch.uint8)}
    make_train_views(batch, views, CLIP_MEAN, CLIP_STD, "cpu")
    t0 = time.perf_counter()
    make_train_views(batch, views, CLIP_MEAN, CLIP_STD, "cpu")
    return 1000 * (time.perf_counter() - t0) / batch_size


# ---- main -----------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "lss-bench-data", help="clip cache")
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma-separated: " + ", ".join(KINDS))
    ap.add_argument("--clips", type=int, default=3, help="clips per kind")
    ap.add_argument("--workers", default="1,2,all", help="DataLoader worker counts ('all' = every core)")
    ap.add_argument("--samples", type=int, default=16, help="training samples timed per measurement")
    ap.add_argument("--eval-samples", type=int, default=32, help="eval clips timed per measurement")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds of the train pipelines (medians)")
    ap.add_argument("--breakdown-repeats", type=int, default=12, help="rounds of the one-core breakdown")
    ap.add_argument("--quick", action="store_true", help="tiny run: 1 kind, 8 samples")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if args.quick:
        args.kinds, args.samples, args.eval_samples, args.clips, args.workers = "mp4-340x256", 8, 16, 2, "1"
        args.repeats, args.breakdown_repeats = 1, 2
    cores = os.cpu_count() or 1
    workers = sorted({cores if w == "all" else int(w) for w in args.workers.split(",")})
    torch.set_num_threads(1)  # the main process only collects batches
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {cores} cores ({platform.processor() or platform.machine()}), "
          f"load average before the run {os.getloadavg()[0]:.2f}, clips in {args.out}")
    results = {"cores": cores, "kinds": {}}
    for name in args.kinds.split(","):
        kind = KINDS[name]
        t0 = time.perf_counter()
        paths = make_clips(args.out, kind, args.clips)
        info = describe(paths)
        print(f"\n## {name}: {info} ({time.perf_counter() - t0:.1f} s to make)")
        rows = measure_kind(paths, workers, args, kind.eval_views)
        results["kinds"][name] = {"clips": info, **rows}
    torch.set_num_threads(cores)
    results["augment_cpu_ms_per_sample"] = augment_cost()
    results["load_average_after"] = os.getloadavg()[0]
    print(f"\non-device augmentation with the CPU as device: {results['augment_cpu_ms_per_sample']:.1f} ms/sample "
          f"({cores} threads); on a GPU this runs batched next to the model. "
          f"Load average after the run: {results['load_average_after']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def measure_kind(paths: list[Path], workers: list[int], args, eval_views: tuple[int, int, int]) -> dict:
    out = {"breakdown": breakdown(paths, args.breakdown_repeats), "rows": []}
    b = out["breakdown"]
    print(f"one core, CPU ms per training sample (medians of {args.breakdown_repeats} interleaved rounds): decode "
          f"{b['decode_approximate_ms']:.1f} approximate seek / {b['decode_exact_ms']:.1f} exact seek / "
          f"{b['decode_naive_ms']:.1f} naive (the union of all views is ~{b['union_frames_of_300']} distinct frames of a "
          f"300-frame clip); crop+resize {b['crop_old_ms']:.1f} old / {b['crop_new_ms']:.1f} new")
    print(f"  per sample: old {b['sample_old_ms']:.1f}, new {b['sample_new_ms']:.1f}, naive {b['sample_naive_ms']:.1f} ms"
          f" -> new/old {b['sample_old_ms'] / b['sample_new_ms']:.2f}x, new/naive "
          f"{b['sample_naive_ms'] / b['sample_new_ms']:.2f}x, old/naive {b['sample_naive_ms'] / b['sample_old_ms']:.2f}x")
    print(f"  whole samples (TrainClips.__getitem__): old {b['getitem_old_ms']:.1f}, new {b['getitem_new_ms']:.1f}, naive "
          f"{b['getitem_naive_ms']:.1f} ms -> new/old {b['getitem_old_ms'] / b['getitem_new_ms']:.2f}x, new/naive "
          f"{b['getitem_naive_ms'] / b['getitem_new_ms']:.2f}x")
    print(f"{'task':<6} {'workers':>7} {'new/s':>8} {'old/s':>8} {'naive/s':>8} {'new/old':>8} {'new/naive':>10} "
          f"{'old/naive':>10}  (train: medians of {args.repeats} interleaved rounds)")
    for w in workers:
        rounds: dict[str, list[float]] = {k: [] for k in TRAIN_PIPELINES}
        for _ in range(args.repeats):
            for name in TRAIN_PIPELINES:
                samples = args.samples if name != "naive" else max(4, args.samples // 2)
                rounds[name].append(train_rate(paths, name, w, samples, 4))
        r = {k: statistics.median(v) for k, v in rounds.items()}
        out["rows"].append({"task": "train", "workers": w, "pipeline": r["new"], "old": r["old"], "naive": r["naive"],
                            "rounds": rounds})
        print(f"{'train':<6} {w:>7} {r['new']:>8.1f} {r['old']:>8.1f} {r['naive']:>8.1f} {r['new'] / r['old']:>7.2f}x "
              f"{r['new'] / r['naive']:>9.2f}x {r['old'] / r['naive']:>9.2f}x", flush=True)
    print(f"eval views: {eval_views[0]} frames x {eval_views[1]} clip(s) x {eval_views[2]} crop(s)")
    print(f"{'task':<6} {'workers':>7} {'pipeline/s':>11} {'per core':>9} {'naive/s':>9} {'per core':>9} {'speed-up':>9}")
    evaluate = functools.partial(eval_rate, views=eval_views)
    for w in workers:
        fast = evaluate(paths, False, w, args.eval_samples, 8)
        slow = evaluate(paths, True, w, max(8, args.eval_samples // 2), 8)
        out["rows"].append({"task": "eval", "workers": w, "pipeline": fast, "naive": slow})
        print(f"{'eval':<6} {w:>7} {fast:>11.1f} {fast / w:>9.1f} {slow:>9.1f} {slow / w:>9.1f} {fast / slow:>8.2f}x",
              flush=True)
    return out


if __name__ == "__main__":
    main()

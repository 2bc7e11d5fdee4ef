"""DataLoaders for training (multi-view self-distillation clips) and evaluation (test views).

Training — `build_train_loader(data_cfg, views_cfg, *, seed, rank=0, world_size=1, videos=None)`
(`seed` is the run seed, the SAME on every rank: the ranks must agree on the shuffle to get
disjoint shards; per-sample randomness already differs by video index):
- a `TrainLoader` (a DataLoader) over `videos` (default: `load_dataset(data_cfg.dataset,
  data_cfg.root, data_cfg.split, data_cfg.list_file)`), sharded like DistributedSampler (shuffle
  with `seed + epoch`, pad by wrapping so every rank gets the same count, shard `rank::world_size`);
  call `loader.set_epoch(e)` before each epoch. Batches are full (`drop_last`).
- each sample: the union of all views' frame indices (`sampling.multiview_indices`) is decoded
  in one batched call by a decoder created inside `__getitem__` (CPU, one FFmpeg thread,
  `data.seek_mode`), then each view's random-resized-crop box is cut and resized to the view size
  in uint8 (`augment.crop_resize`; see `lss_cli.data.augment` for the cost and the reasoning).
  Randomness comes from a generator seeded with (seed, epoch, video index, attempt), so a sample
  is the same whatever the worker count.
- a batch is a dict:
  `global` uint8 `[B, V_g, T_g, 3, G, G]`; `local` uint8 `[B, V_l, T_l, 3, L, L]` (a list of
  `[B, T_l_i, 3, L, L]` when `views.local_frames` gives different counts); `index` int64 `[B]`
  (the video each sample came from); `label` int64 `[B]`; `skipped` int: unreadable videos met
  while building this batch, each replaced by another random video; `skipped_paths` and
  `skipped_reasons`: list[str] of those videos. The loader logs each bad path once (main process)
  and keeps the run total in `loader.skipped_total`. A decode that hangs is abandoned after
  `data.decode_timeout` seconds and counts as unreadable. Pinned memory when CUDA is present.
- `make_train_views(batch, views_cfg, mean, std, device, generator=None)` (re-exported from
  `lss_cli.data.augment`) turns a batch into augmented, normalised float32 views on the device.

Evaluation — `build_eval_loader(videos, *, num_frames, num_clips, num_crops, image_size,
batch_size, num_workers, rank=0, world_size=1, seek_mode="exact", decode_timeout=60.0)`:
- rank r gets videos r, r + world_size, ... in order: no duplicates, nothing dropped, no padding
  (ranks may get one video more or less; gather by `index`).
- a batch is a dict: `index` int64 `[B]` (position in `videos`), `label` int64 `[B]`, `frames`
  uint8 `[B, num_clips * num_crops, T, 3, S, S]` (view `k * num_crops + c` = clip k, crop c; clips
  from `sampling.eval_clip_indices`, frames at segment centres; short side resized to S bicubic
  with antialias; centre crop or three crops), `ok` bool `[B]` and `error` list[str] ("" when ok).
  An unreadable video is never dropped: `ok` is False, `error` says why, its frames are zeros.
- `make_eval_views(batch, num_crops, image_size, mean, std, device)` normalises on the device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lss_cli.config import DataConfig, ViewsConfig
from lss_cli.data.augment import (
    crop_resize,
    make_eval_views,
    make_train_views,
    resize_short_side,
    spatial_crops,
)
from lss_cli.data.datasets import VideoList, load_dataset
from lss_cli.data.sampling import (
    eval_clip_indices,
    local_frame_counts,
    multiview_indices,
    random_resized_crop_box,
)
from lss_cli.data.video_io import VideoReadError, read_union
from lss_cli.errors import ConfigError, LssError
from lss_cli.runtime.progress import warn
from lss_cli.runtime.seeding import sample_seed

__all__ = ["EvalShardSampler", "TrainLoader", "TrainShardSampler", "build_eval_loader", "build_train_loader",
           "make_eval_views", "make_train_views"]

MAX_SUBSTITUTES = 32  # consecutive unreadable videos one sample may meet before the run stops


# --------------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------------


class TrainShardSampler(Sampler):
    """DistributedSampler-like: yields `(epoch, index)` keys of this rank's shard of a shuffled epoch."""

    def __init__(self, num_videos: int, *, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.num_videos, self.seed, self.rank, self.world_size, self.shuffle = num_videos, seed, rank, world_size, shuffle
        self.epoch = 0
        self.start = 0  # samples of this rank's shard to skip in the current epoch (exact resume)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start(self, start: int) -> None:
        """Skip the first `start` samples of this epoch's shard without decoding them (resume)."""
        self.start = start

    def __len__(self) -> int:
        return math.ceil(self.num_videos / self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch))
            order = torch.randperm(self.num_videos, generator=g).tolist()
        else:
            order = list(range(self.num_videos))
        total = len(self) * self.world_size
        order += (order * math.ceil(total / max(1, len(order))))[: total - len(order)]  # wrap-pad
        return ((self.epoch, i) for i in order[self.rank:total:self.world_size][self.start:])


class EvalShardSampler(Sampler):
    """Rank r gets indices r, r + world_size, ...: every video exactly once over all ranks."""

    def __init__(self, num_videos: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.indices = range(rank, num_videos, world_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


class TrainClips(Dataset):
    """Multi-view uint8 clips; bad videos are replaced (see the module docstring)."""

    reader = staticmethod(read_union)  # (path, pick, *, seek_mode, timeout) -> (frames, positions); benchmarks swap it

    def __init__(self, videos: VideoList, data_cfg: DataConfig, views_cfg: ViewsConfig, seed: int):
        self.videos, self.data_cfg, self.views, self.seed = videos, data_cfg, views_cfg, seed
        self._known_bad: dict[int, str] = {}  # per worker: index -> reason, so a bad file is read once

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        bad_paths, bad_reasons = [], []
        for attempt in range(MAX_SUBSTITUTES + 1):
            g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index, attempt))
            try:
                glob, local = self._read(index, g)
                return {"global": glob, "local": local, "index": index, "label": self.videos.label(index),
                        "skipped_paths": bad_paths, "skipped_reasons": bad_reasons}
            except VideoReadError as e:
                self._known_bad.setdefault(index, str(e))
                bad_paths.append(self.videos.path(index))
                bad_reasons.append(self._known_bad[index])
                # Its own generator: a timed-out decode thread may still hold `g`.
                index = self._substitute(torch.Generator().manual_seed(sample_seed(self.seed, epoch, index, attempt, -1)))
        raise LssError(f"{MAX_SUBSTITUTES + 1} videos in a row were unreadable (last: {bad_paths[-1]}: {bad_reasons[-1]})",
                       hint="run `lss data check` on the list and fix or remove the unreadable files")

    def _substitute(self, g: torch.Generator) -> int:
        """A random other video, avoiding those this worker already found unreadable."""
        for _ in range(100):
            index = int(torch.randint(len(self.videos), (1,), generator=g))
            if index not in self._known_bad:
                break
        return index

    def _read(self, index: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | list[torch.Tensor]]:
        if index in self._known_bad:
            raise VideoReadError(self._known_bad[index])
        v = self.views
        frames, positions = self.reader(self.videos.path(index), lambda n: multiview_indices(n, v, g).all(),
                                        seek_mode=self.data_cfg.seek_mode, timeout=self.data_cfg.decode_timeout)
        h, w = frames.shape[-2:]  # frames: the union of all views' frames [U, 3, H, W]
        # Each view is resized straight into its slot of the sample's tensors (no stack copy).
        u8 = {"dtype": torch.uint8}
        glob = torch.empty(v.global_views, v.global_frames, 3, v.global_size, v.global_size, **u8)  # [V_g, T_g, 3, G, G]
        counts = local_frame_counts(v)
        local: torch.Tensor | list[torch.Tensor]
        if len(set(counts)) <= 1:  # same T for all local views (or none): one tensor
            local = torch.empty(len(counts), counts[0] if counts else v.global_frames, 3, v.local_size, v.local_size, **u8)
        else:
            local = [torch.empty(t, 3, v.local_size, v.local_size, **u8) for t in counts]
        for i, rows in enumerate(positions):
            is_global = i < v.global_views
            scale, size = (v.global_scale, v.global_size) if is_global else (v.local_scale, v.local_size)
            box = random_resized_crop_box(h, w, scale, generator=g)
            crop_resize(frames, box, size, rows, out=glob[i] if is_global else local[i - v.global_views])
        return glob, local


def collate_train(samples: list[dict]) -> dict:
    local = [s["local"] for s in samples]
    paths = [p for s in samples for p in s["skipped_paths"]]
    return {
        "global": torch.stack([s["global"] for s in samples]),
        "local": torch.stack(local) if isinstance(local[0], torch.Tensor) else [torch.stack(v) for v in zip(*local, strict=True)],
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
        "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),
        "skipped": len(paths),
        "skipped_paths": paths,
        "skipped_reasons": [r for s in samples for r in s["skipped_reasons"]],
    }


class TrainLoader(DataLoader):
    """A DataLoader with `set_epoch`, that logs each unreadable path once and counts them all."""

    def __init__(self, *args, log_bad=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.skipped_total = 0  # unreadable videos met (and replaced) so far in this process
        self.bad_paths: set[str] = set()
        self._log_bad = log_bad

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def shutdown_workers(self) -> None:
        """Shut the persistent workers down now (see `stop_workers`). `iter(self)` is the generator
        below, not PyTorch's iterator: the workers belong to the one DataLoader keeps in `_iterator`."""
        stop_workers(self._iterator)

    def __iter__(self):
        for batch in super().__iter__():
            self.skipped_total += batch["skipped"]
            for path, reason in zip(batch["skipped_paths"], batch["skipped_reasons"], strict=True):
                if path not in self.bad_paths:
                    self.bad_paths.add(path)
                    if self._log_bad is not None:
                        self._log_bad(path, reason)
            yield batch


def _warn_bad(path: str, reason: str) -> None:
    warn(f"unreadable video replaced by another: {path} ({reason})")


def worker_death(error: BaseException, then: str) -> LssError | None:
    """A DataLoader worker that died, as a readable error (`then`: what the user can do next), or
    None for any other error. PyTorch reports a dead worker as a RuntimeError "DataLoader worker
    (pid ...) ...", from the fetch that waited for it or from its SIGCHLD handler, wherever the main
    thread was. The usual killer is the kernel's out-of-memory killer, which says nothing."""
    if not (isinstance(error, RuntimeError) and str(error).startswith("DataLoader worker")):
        return None
    why = str(error).strip().rstrip(".")
    return LssError(f"a data-loading process died: {why}",
                    hint="most often the kernel's out-of-memory killer (see `dmesg`): lower data.num_workers or "
                         f"data.batch_size, or give the job more memory; {then}")


def stop_workers(iterator) -> None:
    """Shut a DataLoader iterator's workers down now. After a worker died, PyTorch's SIGCHLD handler
    raises again for it at the next child-process signal, wherever the program is, until its
    iterator is shut down; `_shutdown_workers` is private but present in every torch 2.x."""
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def _loader_kwargs(num_workers: int) -> dict:
    kw = {"num_workers": num_workers, "pin_memory": torch.cuda.is_available()}
    if num_workers > 0:
        kw.update(persistent_workers=True, prefetch_factor=2)
    return kw


def build_train_loader(data_cfg: DataConfig, views_cfg: ViewsConfig, *, seed: int, rank: int = 0,
                       world_size: int = 1, videos: VideoList | None = None) -> TrainLoader:
    """The training loader (see the module docstring)."""
    if videos is None:
        videos = load_dataset(data_cfg.dataset, data_cfg.root, data_cfg.split, data_cfg.list_file)
    sampler = TrainShardSampler(len(videos), seed=seed, rank=rank, world_size=world_size)
    if len(sampler) < data_cfg.batch_size:
        raise ConfigError(f"each rank gets {len(sampler)} training videos, fewer than one batch of {data_cfg.batch_size}",
                          hint="lower data.batch_size or use a larger training list")
    return TrainLoader(TrainClips(videos, data_cfg, views_cfg, seed), batch_size=data_cfg.batch_size, sampler=sampler,
                       drop_last=True, collate_fn=collate_train, log_bad=_warn_bad, **_loader_kwargs(data_cfg.num_workers))


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


class EvalClips(Dataset):
    """Test views of each video, or an explicit unreadable marker."""

    reader = staticmethod(read_union)  # (path, pick, *, seek_mode, timeout, strict) -> (frames, positions); benchmarks swap it

    def __init__(self, videos: VideoList, num_frames: int, num_clips: int, num_crops: int, image_size: int,
                 seek_mode: str, decode_timeout: float | None):
        self.videos = videos
        self.num_frames, self.num_clips, self.num_crops, self.size = num_frames, num_clips, num_crops, image_size
        self.seek_mode, self.timeout = seek_mode, decode_timeout

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict:
        item = {"index": index, "label": self.videos.label(index), "ok": True, "error": ""}
        try:
            item["frames"] = self._read(index)
        except VideoReadError as e:
            shape = (self.num_clips * self.num_crops, self.num_frames, 3, self.size, self.size)
            item.update(frames=torch.zeros(shape, dtype=torch.uint8), ok=False, error=str(e))
        return item

    def _read(self, index: int) -> torch.Tensor:
        """uint8 `[num_clips * num_crops, T, 3, S, S]`, view `k * num_crops + c` = clip k, crop c.

        Each distinct frame is resized once: clips may share frames, and a video shorter than
        `num_frames` repeats frames within a clip. The resize is per frame, so the result is the
        same as resizing every clip's frames on their own."""
        frames, positions = self.reader(self.videos.path(index),
                                        lambda n: list(eval_clip_indices(n, self.num_frames, self.num_clips)),
                                        seek_mode=self.seek_mode, timeout=self.timeout, strict=True)
        frames = resize_short_side(frames, self.size)  # distinct frames [U, 3, S', L']
        crops = torch.stack(spatial_crops(frames, self.size, self.num_crops))  # [C, U, 3, S, S]
        # Row of (clip k, crop c, frame t) in crops.flatten(0, 1): c * U + position; one gather
        # writes the views in their final order.
        rows = torch.stack(positions)[:, None, :] + len(frames) * torch.arange(self.num_crops)[None, :, None]  # [K, C, T]
        return crops.flatten(0, 1)[rows.flatten()].view(-1, self.num_frames, 3, self.size, self.size)  # [K * C, T, 3, S, S]


def collate_eval(items: list[dict]) -> dict:
    return {
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
        "label": torch.tensor([it["label"] for it in items], dtype=torch.long),
        "frames": torch.stack([it["frames"] for it in items]),
        "ok": torch.tensor([it["ok"] for it in items], dtype=torch.bool),
        "error": [it["error"] for it in items],
    }


def build_eval_loader(videos: VideoList, *, num_frames: int, num_clips: int, num_crops: int, image_size: int,
                      batch_size: int, num_workers: int, rank: int = 0, world_size: int = 1,
                      seek_mode: str = "exact", decode_timeout: float | None = 60.0) -> DataLoader:
    """The evaluation loader (see the module docstring)."""
    if num_crops not in (1, 3):
        raise ConfigError(f"num_crops must be 1 or 3, got {num_crops}")
    dataset = EvalClips(videos, num_frames, num_clips, num_crops, image_size, seek_mode, decode_timeout)
    kw = _loader_kwargs(num_workers)
    kw.pop("persistent_workers", None)  # one pass: workers end with it
    return DataLoader(dataset, batch_size=batch_size, sampler=EvalShardSampler(len(videos), rank, world_size),
                      collate_fn=collate_eval, drop_last=False, **kw)


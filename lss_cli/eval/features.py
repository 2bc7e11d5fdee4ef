"""Feature extraction for evaluation, with a per-video on-disk cache.

Every eval command (zero-shot, linear probe, predict) gets its video features here. Features are
cached per video, keyed by everything that changes them: the model (`VideoModel.model_id`, a hash
of its weights), the feature kind, and the views (frames, clips, crops, input size). The cache is
per video, not per list, so UCF101's three splits (permutations of the same 13,320 videos) decode
each video once, and a rerun decodes nothing. An entry is dropped when its file's size or mtime
changes. Unreadable videos are cached as such (with the reason), so they stay reported.

Extraction is resumable: while a list is encoded, the finished videos are checkpointed every
`SAVE_EVERY_S` seconds, and again when the run is interrupted (Ctrl-C, SIGTERM, a crash), so a
rerun encodes only the rest. A video enters the cache only once its features are fully computed.
Under torch.distributed each rank checkpoints its own shard to its own partial file (ranks never
write one file together, and a save needs no collective, so a rank can save while others are
gone); the cache folds every partial file of its key in at load, whatever world size wrote them,
and rank 0 merges them into the main file at the start and the end of each extraction.

Several processes may share a cache file safely (`lss_cli.eval.cache`).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist

from lss_cli.data.loader import build_eval_loader, make_eval_views, stop_workers, worker_death
from lss_cli.eval.cache import FeatureCache, Row
from lss_cli.eval.forward import EvalForward
from lss_cli.runtime.dist import barrier, is_distributed
from lss_cli.runtime.progress import log, make_progress, warn

# Checkpoint interval while a list is encoded. Each checkpoint rewrites the whole file: 20,000
# entries x 3 views x 512 floats (124 MB) take ~0.5 s to save on a 2-core CPU box
# (benchmarks/cache_save.py), against ~60 s of decoding and encoding between saves (~300 videos
# on one GPU): < 1% of the run, and an interruption loses at most a minute of work. A larger
# cache on a slower disk cannot push that share up: the next save waits SAVE_COST_FACTOR x the
# last save's duration when that is longer (<= 5%). A video-count trigger would add nothing: time
# is what an interruption loses, and on a fast machine it would only make saves more frequent.
# A save that finds the file replaced by another process (a parallel eval of the same model)
# re-reads it first: ~0.2 s more at that size, only then, and counted in the save's duration.
SAVE_EVERY_S = 60.0
SAVE_COST_FACTOR = 20.0


@dataclass(frozen=True)
class Views:
    num_frames: int = 8  # frames per view, at the centres of equal segments
    num_clips: int = 1  # temporal views
    num_crops: int = 1  # spatial views (1 centre, 3 left/centre/right)

    @property
    def count(self) -> int:
        return self.num_clips * self.num_crops


@dataclass
class Features:
    feats: torch.Tensor  # [N, V, D] float32; L2-normalised per view for kind "proj"
    ok: torch.Tensor  # [N] bool: False = unreadable (feats are zeros there)
    errors: dict[int, str]  # index -> why the video could not be read
    decoded: int  # videos decoded in this call (0 when everything came from the cache)


class _Checkpointer:
    """Calls `save` every SAVE_EVERY_S seconds (or SAVE_COST_FACTOR x its last duration, if
    longer) while videos are being added, and on `flush`."""

    def __init__(self, save: Callable[[], None] | None):
        self.save = save
        self.pending = 0  # videos added since the last save
        self.due = time.monotonic() + SAVE_EVERY_S

    def added(self, n: int) -> None:
        self.pending += n
        if time.monotonic() >= self.due:
            self.flush()

    def flush(self) -> None:
        if self.save is None or self.pending == 0:
            return
        tic = time.monotonic()
        if not _cache_write(self.save):
            self.save = None  # the cache folder refuses writes: evaluate on without checkpoints
            return
        self.pending = 0
        self.due = time.monotonic() + max(SAVE_EVERY_S, SAVE_COST_FACTOR * (time.monotonic() - tic))

    def flush_on_error(self) -> None:
        """The last save before an exception propagates: a failing save must not replace that
        exception (a second Ctrl-C during it only loses what it was saving)."""
        try:
            self.flush()
        except Exception as e:  # noqa: BLE001 - reported, then the original exception goes on
            warn(f"could not save the feature cache on the way out ({type(e).__name__}: {e})")


def _cache_write(write: Callable[[], None]) -> bool:
    """Run one write of the feature cache; a cache that cannot be written (full disk, read-only
    folder) is a warning, never the end of an evaluation whose features are in memory."""
    try:
        write()
    except OSError as e:
        warn(f"could not write the feature cache ({e.strerror or type(e).__name__}: {e.filename}); the evaluation "
             "goes on, but a rerun will encode these videos again")
        return False
    return True


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's stop, torchrun shutting its workers down) raises KeyboardInterrupt,
    so it takes the Ctrl-C path: the finished features are saved, the CLI exits 130. Only the
    main thread can install handlers; elsewhere SIGTERM keeps its handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _encode_batches(model, videos, views: Views, kind: str, *, batch_size: int, num_workers: int,
                    device: torch.device, desc: str, compile: bool = False) -> Iterator[list[tuple[int, Row]]]:
    """Decode and encode this rank's shard of `videos`; yields each batch as (index, row) pairs.

    A batch's features are read on the host only after the next batch's forward is queued: reading
    them at once would make the host wait for the GPU every batch and leave the GPU idle while the
    host fetches, copies and launches the next one. If anything fails (Ctrl-C included), the batch
    already computed is still yielded before the error propagates, so it reaches the cache."""
    rank, world = _rank_world()
    size = model.clip.image_size
    loader = build_eval_loader(videos, num_frames=views.num_frames, num_clips=views.num_clips,
                               num_crops=views.num_crops, image_size=size, batch_size=batch_size,
                               num_workers=min(num_workers, os.cpu_count() or 1), rank=rank,
                               world_size=world)
    forward = EvalForward(model.encoder, kind, batch_size * views.count, compile=compile)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    pending = None  # (batch, features on their way to the host, copy-done event) of the previous batch
    with make_progress(rank) as bar, torch.inference_mode(), autocast:
        task = bar.add_task(desc, total=len(loader.sampler))

        def deliver(done_batch) -> list[tuple[int, Row]]:
            rows = _rows(*done_batch)
            bar.advance(task, len(rows))
            return rows

        batches = iter(loader)
        try:
            for batch in batches:
                x = make_eval_views(batch, views.num_crops, size, model.clip.mean, model.clip.std, device)  # [B, V, T, 3, S, S]
                B, V = x.shape[:2]
                z = forward(x.flatten(0, 1)).float().view(B, V, -1)  # [B, V, D]
                current = (batch, *_to_host(z))
                if pending is not None:
                    yield deliver(pending)
                pending = current
        except GeneratorExit:
            raise
        except BaseException:
            if pending is not None:
                yield deliver(pending)  # computed before the failure: keep it (the consumer caches it)
            raise
        finally:
            # Now, not when the iterator is collected: after a worker died, PyTorch raises its death
            # again at the next child-process signal, wherever the program is, until then.
            stop_workers(batches)
        if pending is not None:
            yield deliver(pending)


def _to_host(z: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Start copying `z` to the host without waiting (pinned, non-blocking on CUDA); returns the host
    tensor and an event to wait on before reading it (None: already there)."""
    if z.device.type != "cuda":
        return z.cpu(), None
    host = z.to("cpu", non_blocking=True)  # a pinned destination, filled when the GPU gets there
    done = torch.cuda.Event()
    done.record()
    return host, done


def _rows(batch: dict[str, Any], z: torch.Tensor, done: Any) -> list[tuple[int, Row]]:
    """(index, (features [V, D], ok, error)) per video of a batch; zeros for unreadable videos."""
    if done is not None:
        done.synchronize()
    rows = []
    for j in range(len(batch["index"])):
        ok = bool(batch["ok"][j])
        rows.append((int(batch["index"][j]), (z[j] if ok else torch.zeros_like(z[j]), ok, batch["error"][j])))
    return rows


def _gather(local: dict[int, Row]) -> dict[int, Row]:
    """Union of every rank's results (eval shards are disjoint). No-op in a single process."""
    if not is_distributed() or tdist.get_world_size() == 1:
        return local
    parts: list[Any] = [None] * tdist.get_world_size()
    tdist.all_gather_object(parts, local)
    merged: dict[int, Row] = {}
    for part in parts:
        merged.update(part)
    return merged


def _encode_missing(model, videos, keys: list[str], cache: FeatureCache | None, views: Views, kind: str,
                    **loader_kw: Any) -> dict[int, Row]:
    """Encode `videos` (keys[j] = cache key of videos[j]) over all ranks; returns j -> row.

    Each finished video enters the cache at once and is checkpointed on the way; on any exception
    (Ctrl-C, SIGTERM, a crash) the finished ones are saved before it propagates."""
    rank, world = _rank_world()
    save = None if cache is None else cache.save if world == 1 else lambda: cache.save_partial(rank)
    checkpoint = _Checkpointer(save)
    local: dict[int, Row] = {}
    with _sigterm_as_interrupt(), closing(_encode_batches(model, videos, views, kind, **loader_kw)) as batches:
        try:
            for batch in batches:
                for j, row in batch:
                    local[j] = row
                    if cache is not None:
                        cache.add(keys[j], *row)
                checkpoint.added(len(batch))
            if world > 1:
                checkpoint.flush()  # this shard is safe even if the gather never returns
        except BaseException as e:
            checkpoint.flush_on_error()
            kept = cache is not None and bool(local)
            if kept and rank == 0:
                log(f"stopped: the features of the {len(local)} video(s) finished{' on rank 0' if world > 1 else ''} "
                    f"are in the cache ({cache.path.parent}); a rerun encodes only the rest")
            died = worker_death(e, "a rerun encodes only the videos not yet in the feature cache" if kept
                                else "then rerun")
            if died is not None:
                raise died from None
            raise
    return _gather(local)


def extract_features(model, videos, views: Views, *, kind: str = "proj", cache_dir: str | Path | None = None,
                     batch_size: int = 16, num_workers: int = 2, device: torch.device | str = "cpu",
                     desc: str = "features", compile: bool = False) -> Features:
    """Features of every video in `videos` (a VideoList), [N, V, D], from the cache where possible.

    `model` is a `lss_cli.models.artefact.VideoModel`. Unreadable videos get ok=False and their reason;
    none is dropped. Interrupted, it leaves the videos it finished in the cache (module docstring).
    `compile`: torch.compile the encoder forward (`lss_cli.eval.forward`; worth it on a GPU).
    """
    cache = _open_cache(cache_dir, model, kind, views)
    rows: dict[int, Row] = {}
    missing = []
    for i in range(len(videos)):
        hit = cache.lookup(_key(videos.path(i))) if cache is not None else None
        if hit is None:
            missing.append(i)
        else:
            rows[i] = hit
    if missing:
        sub = videos.subset(missing) if len(missing) < len(videos) else videos
        keys = [_key(videos.path(i)) for i in missing]
        got = _encode_missing(model, sub, keys, cache, views, kind, batch_size=batch_size, num_workers=num_workers,
                              device=torch.device(device), desc=desc, compile=compile)
        for j, i in enumerate(missing):
            rows[i] = got[j]
            if cache is not None and keys[j] not in cache.fresh:
                cache.add(keys[j], *got[j])  # another rank's video (rank 0 writes them to the main file)
        if cache is not None and _is_main():
            _cache_write(cache.merge_partials)
        barrier()  # every rank then reads the same cache file, so all agree on what is missing
    feats = torch.stack([rows[i][0] for i in range(len(videos))])
    ok = torch.tensor([rows[i][1] for i in range(len(videos))], dtype=torch.bool)
    errors = {i: rows[i][2] for i in range(len(videos)) if not rows[i][1]}
    return Features(feats, ok, errors, decoded=len(missing))


def _open_cache(cache_dir: str | Path | None, model, kind: str, views: Views) -> FeatureCache | None:
    """The cache of this model, kind and views, with any partial files of an interrupted run
    merged into the main file first, so a rank's partial file only ever holds this run's work."""
    if cache_dir is None:
        return None
    cache = FeatureCache(cache_dir, {"model": model.model_id, "kind": kind, "views": views.__dict__,
                                     "image_size": model.clip.image_size})
    barrier()  # every rank has read the partial files before rank 0 removes them
    if cache.partials and _is_main():
        _cache_write(cache.merge_partials)
    barrier()  # ... and they are gone before any rank writes its own
    return cache


def _key(path: str) -> str:
    """Cache entries are keyed by absolute path: a relative root means another file from another folder."""
    return os.path.abspath(path)


def _rank_world() -> tuple[int, int]:
    if is_distributed():
        return tdist.get_rank(), tdist.get_world_size()
    return 0, 1


def _is_main() -> bool:
    return _rank_world()[0] == 0


"""Feature extraction for evaluation, with a per-video on-disk cache.

Every eval command (zero-shot, linear probe, predict) gets its video features here. Features are
cached per video, keyed by everything that changes them: the model (`VideoModel.model_id`, a hash
of its weights), the feature kind, and the views (frames, clips, crops, input size). The cache is
per video, not per list, so UCF101's three splits (permutations of the same 13,320 videos) decode
each video once, and a rerun decodes nothing. An entry is dropped when its file's size or mtime
changes. Unreadable videos are cached as such (with the reason), so they stay reported.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lss_cli.runtime.progress import make_progress

CACHE_VERSION = 1  # bump when the feature computation changes


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


def _file_stamp(path: str) -> str:
    try:
        st = os.stat(path)
        return f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        return "missing"


class FeatureCache:
    """One safetensors file per (model, kind, views, input size): feats [n, V, D], ok [n], and in
    the metadata the paths, file stamps and errors. Rewritten atomically on every update."""

    def __init__(self, cache_dir: str | Path, key: dict[str, Any]):
        digest = hashlib.sha256(json.dumps({**key, "v": CACHE_VERSION}, sort_keys=True).encode()).hexdigest()[:24]
        self.path = Path(cache_dir) / f"features-{digest}.safetensors"
        self.key = key
        self.entries: dict[str, tuple[str, torch.Tensor, bool, str]] = {}  # path -> (stamp, [V, D], ok, error)
        if self.path.is_file():
            self._read()

    def _read(self) -> None:
        """Load the entries; a damaged cache file is ignored (and replaced on save), never fatal."""
        try:
            with safe_open(str(self.path), framework="pt") as f:
                meta = f.metadata() or {}
                feats, ok = f.get_tensor("feats"), f.get_tensor("ok")  # [n, V, D], [n]
            rows = json.loads(meta["rows"])
            if len(rows) != len(feats) or len(rows) != len(ok):
                raise ValueError(f"{len(rows)} rows for {len(feats)} feature rows")
        except Exception as e:  # noqa: BLE001 - any damage means: recompute
            from lss_cli.runtime.progress import warn

            warn(f"ignoring the unreadable feature cache {self.path} ({type(e).__name__}: {e}); it will be rebuilt")
            return
        for i, (path, stamp, error) in enumerate(rows):
            self.entries[path] = (stamp, feats[i], bool(ok[i]), error)

    def lookup(self, path: str) -> tuple[torch.Tensor, bool, str] | None:
        hit = self.entries.get(path)
        if hit is None or hit[0] != _file_stamp(path):
            return None
        return hit[1], hit[2], hit[3]

    def add(self, path: str, feat: torch.Tensor, ok: bool, error: str) -> None:
        if not ok and "did not finish within" in error:
            return  # a decode timeout may be transient (a slow mount): try that file again next time
        self.entries[path] = (_file_stamp(path), feat, ok, error)

    def save(self) -> None:
        if not self.entries:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        paths = list(self.entries)
        feats = torch.stack([self.entries[p][1] for p in paths]).contiguous()
        ok = torch.tensor([self.entries[p][2] for p in paths])
        rows = [[p, self.entries[p][0], self.entries[p][3]] for p in paths]
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        save_file({"feats": feats, "ok": ok}, str(tmp), metadata={"rows": json.dumps(rows), "key": json.dumps(self.key)})
        os.replace(tmp, self.path)


def _encode_batches(model, videos, views: Views, kind: str, *, batch_size: int, num_workers: int,
                    device: torch.device, desc: str) -> dict[int, tuple[torch.Tensor, bool, str]]:
    """Decode and encode `videos`; returns index -> ([V, D] cpu float32, ok, error)."""
    from lss_cli.data.loader import build_eval_loader, make_eval_views

    rank, world = _rank_world()
    size = model.clip.image_size
    loader = build_eval_loader(videos, num_frames=views.num_frames, num_clips=views.num_clips,
                               num_crops=views.num_crops, image_size=size, batch_size=batch_size,
                               num_workers=min(num_workers, os.cpu_count() or 1), rank=rank,
                               world_size=world)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    out: dict[int, tuple[torch.Tensor, bool, str]] = {}
    with make_progress(rank) as bar, torch.inference_mode(), autocast:
        task = bar.add_task(desc, total=len(loader.sampler))
        for batch in loader:
            x = make_eval_views(batch, views.num_crops, size, model.clip.mean, model.clip.std, device)  # [B, V, T, 3, S, S]
            B, V = x.shape[:2]
            z = model.encoder.encode(x.flatten(0, 1), proj=kind == "proj", normalize=kind == "proj")  # [B*V, D]
            z = z.float().view(B, V, -1).cpu()
            for j in range(B):
                ok = bool(batch["ok"][j])
                out[int(batch["index"][j])] = (z[j] if ok else torch.zeros_like(z[j]), ok, batch["error"][j])
            bar.advance(task, B)
    return out


def _gather(local: dict[int, tuple[torch.Tensor, bool, str]]) -> dict[int, tuple[torch.Tensor, bool, str]]:
    """Union of every rank's results (eval shards are disjoint). No-op in a single process."""
    import torch.distributed as tdist

    if not (tdist.is_available() and tdist.is_initialized()) or tdist.get_world_size() == 1:
        return local
    parts: list[Any] = [None] * tdist.get_world_size()
    tdist.all_gather_object(parts, local)
    merged: dict[int, tuple[torch.Tensor, bool, str]] = {}
    for part in parts:
        merged.update(part)
    return merged


def extract_features(model, videos, views: Views, *, kind: str = "proj", cache_dir: str | Path | None = None,
                     batch_size: int = 16, num_workers: int = 2, device: torch.device | str = "cpu",
                     desc: str = "features") -> Features:
    """Features of every video in `videos` (a VideoList), [N, V, D], from the cache where possible.

    `model` is a `lss_cli.models.export.VideoModel`. Unreadable videos get ok=False and their reason;
    none is dropped.
    """
    device = torch.device(device)
    cache = None
    if cache_dir is not None:
        cache = FeatureCache(cache_dir, {"model": model.model_id, "kind": kind, "views": views.__dict__,
                                         "image_size": model.clip.image_size})
    rows: dict[int, tuple[torch.Tensor, bool, str]] = {}
    missing = []
    for i in range(len(videos)):
        hit = cache.lookup(_key(videos.path(i))) if cache is not None else None
        if hit is None:
            missing.append(i)
        else:
            rows[i] = hit
    if missing:
        sub = videos.subset(missing) if len(missing) < len(videos) else videos
        got = _gather(_encode_batches(model, sub, views, kind, batch_size=batch_size, num_workers=num_workers,
                                      device=device, desc=desc))
        for j, i in enumerate(missing):
            rows[i] = got[j]
            if cache is not None:
                cache.add(_key(videos.path(i)), *got[j])
        if cache is not None and _is_main():
            cache.save()
        _barrier()  # every rank then reads the same cache file, so all agree on what is missing
    feats = torch.stack([rows[i][0] for i in range(len(videos))])
    ok = torch.tensor([rows[i][1] for i in range(len(videos))], dtype=torch.bool)
    errors = {i: rows[i][2] for i in range(len(videos)) if not rows[i][1]}
    return Features(feats, ok, errors, decoded=len(missing))


def _key(path: str) -> str:
    """Cache entries are keyed by absolute path: a relative root means another file from another folder."""
    return os.path.abspath(path)


def _rank_world() -> tuple[int, int]:
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        return tdist.get_rank(), tdist.get_world_size()
    return 0, 1


def _is_main() -> bool:
    return _rank_world()[0] == 0


def _barrier() -> None:
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        tdist.barrier()

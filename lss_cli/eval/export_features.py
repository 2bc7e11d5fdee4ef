"""`lss features`: the per-video features of a list, as one safetensors file, for users' own probes.

The features are the evaluation's (`extract_features`, through the same per-video cache, so a
list `lss eval` already encoded costs nothing). The file holds:

- `features` float32 [N, D]: per video, the mean over its views (for kind `proj`, each view is
  L2-normalised before the mean, as zero-shot scores it);
- `view_features` float32 [N, V, D]: every view, only when there are several (V > 1);
- `labels` int64 [N]: the list's class ids (-1 where the list has no label);
- `ok` bool [N]: False for a video that could not be read (its features are zeros);

and as metadata (strings; JSON where structured): `format`, `model_id`, `checkpoint`, `kind`,
`views`, `dataset`, `source`, `paths` (the videos' paths relative to `root`), `root`, `classes`,
`errors` (index -> why a video was unreadable). Read it with `safetensors.safe_open` or
`lss_cli.api.load_features`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from lss_cli.config import EvalConfig
from lss_cli.errors import ConfigError, InputFileError
from lss_cli.eval.features import Views, extract_features
from lss_cli.eval.protocols import load_split, split_names
from lss_cli.eval.results import DEFAULT_CACHE_DIR
from lss_cli.models.artefact import load_video_model
from lss_cli.runtime.device import resolve_device
from lss_cli.runtime.dist import cleanup, init_distributed
from lss_cli.runtime.outputs import check_output, write_output
from lss_cli.runtime.tensor_io import save_safetensors

FORMAT = "lss-video-features/1"
PARTS = ("test", "train")


def export_features(cfg: EvalConfig, out: str | Path, *, split: str | None = None, part: str = "test") -> dict[str, Any]:
    """Encode one list (`cfg`'s dataset, `split` (default: its first) and `part`) with `cfg`'s
    model and views, kind `cfg.features`, and write the features file `out` atomically. Returns
    a summary: out, videos, unreadable, dim, views, kind, model_id, decoded, is_main.

    Under `torchrun` every rank encodes its shard of the list, the features are gathered, and
    rank 0 alone writes the file (`is_main` says which rank this is), as `lss eval` does."""
    if part not in PARTS:
        raise ConfigError(f"--part must be test or train, got {part!r}")
    device = resolve_device(cfg.device)
    dist = init_distributed(device.type)
    if dist.distributed and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    try:
        # An unwritable --out fails before any video is decoded.
        out = check_output(out, "features file") if dist.is_main else Path(out)
        split = split if split is not None else split_names(cfg)[0]
        videos = load_split(cfg, str(split), part)
        model = load_video_model(cfg.checkpoint, model=cfg.model, pretrained=cfg.pretrained, device=device,
                                 seed=cfg.seed)
        views = Views(cfg.num_frames, cfg.num_clips, cfg.num_crops)
        cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else DEFAULT_CACHE_DIR
        compile = cfg.compile if cfg.compile is not None else device.type == "cuda"
        feats = extract_features(model, videos, views, kind=cfg.features, cache_dir=cache_dir,
                                 batch_size=cfg.batch_size, num_workers=cfg.num_workers, device=device,
                                 desc=f"features {cfg.dataset}", compile=compile)
        tensors = {"features": feats.feats.mean(1).float().contiguous(),
                   "labels": torch.as_tensor(videos.labels, dtype=torch.int64), "ok": feats.ok.clone()}
        if views.count > 1:
            tensors["view_features"] = feats.feats.float().contiguous()
        meta = {"format": FORMAT, "model_id": model.model_id, "checkpoint": model.source, "kind": cfg.features,
                "views": json.dumps({**views.__dict__, "count": views.count, "image_size": model.clip.image_size}),
                "dataset": cfg.dataset, "split": str(split), "part": part, "source": videos.source,
                "root": str(videos.root), "paths": json.dumps([videos.relpath(i) for i in range(len(videos))]),
                "classes": json.dumps(list(videos.classes)),
                "errors": json.dumps({str(i): e for i, e in feats.errors.items()})}
        if dist.is_main:
            write_output(out, lambda p: save_safetensors(p, tensors, meta), what="features file")
        return {"out": str(out), "videos": len(videos), "unreadable": len(feats.errors),
                "dim": int(tensors["features"].shape[1]), "views": views.count, "kind": cfg.features,
                "model_id": model.model_id, "decoded": feats.decoded, "is_main": dist.is_main}
    finally:
        cleanup()  # only a process group init_distributed created


def load_features(path: str | Path) -> dict[str, Any]:
    """A features file back: its tensors by name, and `meta` with the JSON fields parsed."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
    except (OSError, SafetensorError) as e:
        raise InputFileError(f"{path} is not a readable safetensors file: {e}") from None
    if meta.get("format") != FORMAT:
        raise InputFileError(f"{path} is not an lss features file (format {meta.get('format')!r})",
                             hint="write one with `lss features`")
    for key in ("views", "paths", "classes", "errors"):
        meta[key] = json.loads(meta[key])
    return {**tensors, "meta": meta}

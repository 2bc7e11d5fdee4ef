"""The Python API: a video model, its features and zero-shot scores in a few lines.

    from lss_cli.api import load_video_model, encode_video, zero_shot_scores

    model = load_video_model("lss-k400-vitb16.safetensors")         # or None: the CLIP baseline
    feature = encode_video(model, "clip.mp4")                         # [D], L2-normalised
    probs = zero_shot_scores(model, feature, ["archery", "juggling"])  # [K], sums to 1

The numbers are `lss eval`'s and `lss predict`'s: the same frame sampling (centres of equal
segments), CLIP preprocessing (short side resized bicubic with antialias, centre crop), encoder
and prompt-template classifier. `examples/python_api.py` runs this with the tiny model on a
synthetic video, and the test suite runs that example.

`import lss_cli` stays light (the CLI's `--help` loads no torch); this module imports torch, so
import it when you need a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from lss_cli.concepts.templates import load_templates
from lss_cli.data.augment import normalize, resize_short_side, spatial_crops
from lss_cli.data.datasets import VideoList
from lss_cli.data.sampling import eval_clip_indices
from lss_cli.errors import InputFileError, LssError
from lss_cli.eval.export_features import export_features, load_features
from lss_cli.eval.features import Views, extract_features
from lss_cli.eval.zero_shot import class_classifier, zero_shot_probs
from lss_cli.models.artefact import VideoModel, load_video_model

__all__ = ["VideoModel", "encode_video", "export_features", "load_features", "load_video_model", "zero_shot_scores"]

KINDS = ("proj", "pre-proj")


def encode_video(model: VideoModel, video: str | Path | torch.Tensor, num_frames: int = 8, *, num_clips: int = 1,
                 num_crops: int = 1, kind: str = "proj") -> torch.Tensor:
    """One video's feature, float32 [D] on the CPU: the mean over its views (one by default).

    `video`: a file path, or uint8 frames [T, 3, H, W] (every frame of the clip; `num_frames` of
    them are sampled as `lss eval` samples a file). `kind`: "proj" (CLIP's joint space,
    L2-normalised per view: zero-shot) or "pre-proj" (before the projection: linear probes).
    An unreadable file raises `LssError` with the decoder's reason."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    views = Views(num_frames, num_clips, num_crops)
    if isinstance(video, torch.Tensor):
        return _encode_frames(model, video, views, kind).mean(0)
    path = Path(video)
    if not path.is_file():
        raise InputFileError(f"video not found: {path}")
    device = next(model.encoder.parameters()).device
    one = VideoList("", [str(path.resolve())], [-1], ["video"], "encode_video")
    feats = extract_features(model, one, views, kind=kind, cache_dir=None, batch_size=1, num_workers=0,
                             device=device, desc="encode_video")
    if not bool(feats.ok[0]):
        raise LssError(f"{path}: {feats.errors[0]}")
    return feats.feats[0].mean(0)


def _encode_frames(model: VideoModel, frames: torch.Tensor, views: Views, kind: str) -> torch.Tensor:
    """uint8 [T, 3, H, W] -> [V, D]: the eval loader's views (`lss_cli.data.loader.EvalClips`),
    built from frames in memory instead of a file."""
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"expected uint8 frames [T, 3, H, W], got {frames.dtype} {tuple(frames.shape)}")
    size = model.clip.image_size
    idx = eval_clip_indices(frames.shape[0], views.num_frames, views.num_clips)  # [K, T]
    crops = spatial_crops(resize_short_side(frames, size), size, views.num_crops)  # C x [N, 3, S, S]
    x = torch.stack([crop[clip] for clip in idx for crop in crops])  # view k * C + c: [V, T, 3, S, S]
    device = next(model.encoder.parameters()).device
    x = normalize(x.to(device).float().div_(255), model.clip.mean, model.clip.std)
    with torch.inference_mode():
        z = model.encoder.encode(x, proj=kind == "proj", normalize=kind == "proj")  # [V, D]
    return z.float().cpu()


def zero_shot_scores(model: VideoModel, features: torch.Tensor, class_names: Sequence[str],
                     templates: str = "action_templates_v1") -> torch.Tensor:
    """Class probabilities of projected features ([D] -> [K], [N, D] -> [N, K]): softmax over
    `class_names` of the model's logit scale x cosine with each name's prompt-template ensemble
    (`templates`: a shipped template set's name or a YAML path), as `lss eval zero-shot` scores."""
    if len(class_names) < 2:
        raise ValueError("give at least 2 class names")
    single = features.ndim == 1
    feats = features[None] if single else features  # [N, D]
    classifier = class_classifier(model, list(class_names), load_templates(templates))  # [K, D]
    probs = zero_shot_probs(model, feats[:, None].to(classifier.device), classifier).cpu()  # one view each
    return probs[0] if single else probs

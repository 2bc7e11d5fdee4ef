"""`lss predict`: zero-shot classify video files with the user's own label names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lss_cli.concepts.templates import load_templates
from lss_cli.data.datasets import VIDEO_EXTENSIONS, VideoList
from lss_cli.errors import ConfigError, InputFileError
from lss_cli.eval.features import Views, extract_features
from lss_cli.eval.zero_shot import class_classifier, zero_shot_probs
from lss_cli.models.artefact import load_video_model
from lss_cli.runtime.device import resolve_device


def predict(videos: list[str], labels, *, checkpoint: str | None = None, model: str = "ViT-B-16",
            pretrained: str | None = "openai", templates: str = "action_templates_v1", num_frames: int = 8,
            top_k: int = 5, device: str = "auto", batch_size: int = 4, num_workers: int = 0) -> list[dict[str, Any]]:
    """Ranked labels per video: softmax over all labels of the model's logit scale x cosine score.

    `labels` is a `lss_cli.labels.LabelSet`. A folder in `videos` stands for the video files directly
    in it, sorted by name (`expand_folders`). Returns one entry per video, in the order given:
    `{"video", "predictions": [{"label", "prob"}, ...]}` in descending probability, or
    `{"video", "error", "predictions": []}` for a video that could not be read.
    """
    videos = expand_folders(videos)
    _check_request(videos, labels, num_frames, top_k)
    dev = resolve_device(device)
    vm = load_video_model(checkpoint, model=model, pretrained=pretrained, device=dev)
    names = list(labels.names)
    classifier = class_classifier(vm, names, load_templates(templates))  # [K, D]
    vlist = VideoList("", [str(Path(v).resolve()) for v in videos], [-1] * len(videos), names, "predict")
    feats = extract_features(vm, vlist, Views(num_frames, 1, 1), kind="proj", cache_dir=None,
                             batch_size=batch_size, num_workers=num_workers, device=dev, desc="predict")
    probs = zero_shot_probs(vm, feats.feats, classifier)  # [N, K]
    k = min(top_k, len(names))
    out = []
    for i, video in enumerate(videos):
        if not bool(feats.ok[i]):
            out.append({"video": video, "error": feats.errors[i], "predictions": []})
            continue
        p, idx = torch.topk(probs[i], k)
        out.append({"video": video, "predictions": [{"label": names[j], "prob": float(q)}
                                                    for q, j in zip(p.tolist(), idx.tolist(), strict=True)]})
    return out


def expand_folders(videos: list[str]) -> list[str]:
    """Each folder becomes the video files directly in it (by extension, hidden files left out),
    sorted by name; other paths stay as given. A folder without videos is an input error."""
    expanded = []
    for video in videos:
        folder = Path(video)
        if not folder.is_dir():
            expanded.append(video)
            continue
        found = sorted(f.name for f in folder.iterdir()
                       if f.suffix.lower() in VIDEO_EXTENSIONS and not f.name.startswith(".") and f.is_file())
        if not found:
            raise InputFileError(f"{video} is a folder without video files ({', '.join(VIDEO_EXTENSIONS)})",
                                 hint="pass video files, or a folder with videos directly in it (subfolders are not searched)")
        expanded += [str(folder / name) for name in found]
    return expanded


def _check_request(videos: list[str], labels, num_frames: int, top_k: int) -> None:
    """Fail before loading any model: bad options are usage errors, a missing file an input error."""
    if top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {top_k}")
    if num_frames < 1:
        raise ConfigError(f"--num-frames must be >= 1, got {num_frames}")
    if len(labels.names) < 2:
        raise ConfigError(f"need at least 2 label names to rank, got {len(labels.names)}",
                          hint='pass --labels "a,b,c", a file with one name per line, or a built-in set')
    if not videos:
        raise ConfigError("no videos given")
    missing = [v for v in videos if not Path(v).is_file()]
    if missing:
        raise InputFileError(f"video not found: {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                             hint="check the paths")

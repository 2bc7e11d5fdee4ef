"""Exported models and the one loader evaluation and prediction use.

An export (`lss export CKPT --out model.safetensors`) is self-contained: the teacher video encoder
(`video.*`) plus CLIP's text side (`clip.*`, every non-visual CLIP weight), and metadata naming
the architecture. So a user can evaluate or predict anywhere without the original CLIP weights or
the training state.

`load_video_model(source)` accepts an exported file, an export folder (`lss export --hub`: the
file as `model.safetensors` beside config.json and a model card), `hf-hub:org/name[@revision]` (such
a folder on the Hugging Face Hub, through the local Hub cache), a training checkpoint (a run dir,
its `checkpoints/` dir or one `step_*` dir), or None = the plain CLIP frame-average baseline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from lss_cli import __version__
from lss_cli.config import ModelConfig, TrainConfig, from_dict
from lss_cli.errors import InputFileError, LssError
from lss_cli.hashing import file_sha256
from lss_cli.models.clip import Clip, load_clip
from lss_cli.models.hub import is_hub_name, snapshot
from lss_cli.models.video import build_video_encoder
from lss_cli.runtime.checkpoint import Checkpoint, load_checkpoint
from lss_cli.runtime.outputs import check_output, write_output
from lss_cli.runtime.tensor_io import save_safetensors

FORMAT = "lss-video-model/1"
# An export folder (`lss export --hub`, the Hub repo layout): the export file and the config beside it.
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass
class VideoModel:
    encoder: torch.nn.Module  # VideoEncoder, eval mode
    clip: Clip  # text tower, tokenizer, mean/std
    source: str  # what was loaded ("baseline", a file or a checkpoint path)
    model_id: str  # identity for caches and results: sha of the weights or the baseline's weights id
    meta: dict[str, Any]


def export_teacher(checkpoint: str | Path, out: str | Path) -> dict[str, Any]:
    """Write the teacher of a training checkpoint + CLIP's text side as one safetensors file."""
    out = check_output(out, "exported model")  # an unwritable --out fails before the checkpoint is read
    summary = write_teacher(load_checkpoint(checkpoint), out)
    return {k: summary[k] for k in ("out", "step", "tensors", "model")}


def write_teacher(ck: Checkpoint, out: Path) -> dict[str, Any]:
    """Write the export file of a loaded checkpoint; also returns the base CLIP's ids."""
    cfg = from_dict(TrainConfig, ck.meta["config"])
    clip = load_clip(cfg.model.name, cfg.model.pretrained, seed=cfg.run.seed)
    tensors = {f"video.{k}": v.contiguous() for k, v in ck.teacher.items()}
    tensors.update({f"clip.{k}": v.detach().contiguous().cpu() for k, v in clip.model.state_dict().items()
                    if not k.startswith("visual.")})
    meta = {
        "format": FORMAT, "lss_cli_version": __version__, "step": str(ck.step), "checkpoint": str(ck.path),
        "model": json.dumps({"name": cfg.model.name, "temporal": cfg.model.temporal,
                             "num_frames": cfg.model.num_frames}),
        "clip_weights_id": clip.weights_id, "mean": json.dumps(clip.mean), "std": json.dumps(clip.std),
        "image_size": str(clip.image_size),
    }
    write_output(out, lambda p: save_safetensors(p, tensors, meta), what="exported model")
    return {"out": str(out), "step": ck.step, "tensors": len(tensors), "model": cfg.model.name,
            "clip_weights_id": clip.weights_id, "clip_weights_source": clip.weights_source,
            "image_size": clip.image_size, "embed_dim": clip.embed_dim}


def _load_export(path: Path) -> VideoModel:
    hint = "create one with `lss export RUN_DIR --out model.safetensors`"
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise InputFileError(f"{path} is not an lss video model export (format {meta.get('format')!r})", hint=hint)
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
    except (OSError, SafetensorError) as e:
        raise InputFileError(f"{path} is not a readable safetensors file: {e}", hint=hint) from None
    m = json.loads(meta["model"])
    clip = load_clip(m["name"], None)  # architecture only; weights come from the file
    clip_state = {k[5:]: v for k, v in tensors.items() if k.startswith("clip.")}
    missing, unexpected = clip.model.load_state_dict(clip_state, strict=False)
    if unexpected or any(not k.startswith("visual.") for k in missing):
        raise LssError(f"{path}: text-side weights do not match {m['name']}")
    clip.weights_id = meta.get("clip_weights_id", clip.weights_id)
    # The preprocessing of the weights the model was trained from (a local-dir config may differ
    # from the architecture's defaults).
    clip.mean, clip.std = tuple(json.loads(meta["mean"])), tuple(json.loads(meta["std"]))
    clip.image_size = int(meta["image_size"])
    encoder = build_video_encoder(clip, ModelConfig(name=m["name"], temporal=m["temporal"], num_frames=m["num_frames"]))
    try:
        encoder.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("video.")})
    except RuntimeError as e:
        raise LssError(f"{path}: the video weights do not fit {m['name']} ({m['temporal']}): {e}", hint=hint) from None
    return VideoModel(encoder, clip, str(path), f"sha256:{file_sha256(path)}", meta)


def _load_checkpoint(path: Path) -> VideoModel:
    ck = load_checkpoint(path)
    cfg = from_dict(TrainConfig, ck.meta["config"])
    clip = load_clip(cfg.model.name, cfg.model.pretrained, seed=cfg.run.seed)
    encoder = build_video_encoder(clip, cfg.model)
    try:
        encoder.load_state_dict(ck.teacher)
    except RuntimeError as e:
        raise LssError(f"{ck.path}: the teacher weights do not fit {cfg.model.name} ({cfg.model.temporal}): {e}") from None
    return VideoModel(encoder, clip, str(ck.path), f"ckpt-sha256:{file_sha256(ck.path / 'teacher.safetensors')}",
                      {"step": ck.step})


def load_video_model(source: str | Path | None, *, model: str = "ViT-B-16", pretrained: str | None = "openai",
                     device: str | torch.device = "cpu", seed: int = 0) -> VideoModel:
    """The model eval/predict run: an export, a training checkpoint, or (None / "none") the CLIP
    baseline of `model` / `pretrained` (`seed` for a random init). Video and text towers end up on
    `device`, so zero-shot classifiers are encoded there too."""
    vm = _load(source, model, pretrained, seed)
    vm.encoder.to(device).eval()
    vm.clip.model.to(device)
    return vm


def _load(source: str | Path | None, model: str, pretrained: str | None, seed: int) -> VideoModel:
    if is_hub_name(source):
        return _load_hub(str(source))
    if source is None or str(source).lower() in ("none", "baseline"):
        clip = load_clip(model, pretrained, seed=seed)
        # temporal="mean": no new parameters, exactly CLIP applied per frame then averaged.
        encoder = build_video_encoder(clip, ModelConfig(name=model, pretrained=pretrained, temporal="mean"))
        return VideoModel(encoder, clip, "baseline", f"{model}:{clip.weights_id}", {})
    path = Path(source)
    if path.is_file() and path.suffix == ".safetensors":
        return _load_export(path)
    if is_export_folder(path):
        return _load_export(path / MODEL_FILE)
    if path.exists():
        return _load_checkpoint(path)
    raise InputFileError(f"model not found: {path}",
                         hint="pass an exported .safetensors, an export folder, hf-hub:org/name, a run dir / "
                              "checkpoint dir, or `none` for the baseline")


def is_export_folder(path: Path) -> bool:
    """A folder written by `lss export --hub`: model.safetensors and config.json (the demo's run dir
    holds a model.safetensors too, but it is not a model folder)."""
    return path.is_dir() and (path / MODEL_FILE).is_file() and (path / CONFIG_FILE).is_file()


def _load_hub(name: str) -> VideoModel:
    """An export folder from the Hub: same weights, same model id as the file it holds; the
    source records the commit it came from."""
    folder, pinned = snapshot(name)
    if not (folder / MODEL_FILE).is_file():
        raise InputFileError(f"{name} holds no {MODEL_FILE} (its snapshot: {folder})",
                             hint="is it an lss video model? an open_clip model is named with --model / --pretrained")
    vm = _load_export(folder / MODEL_FILE)
    vm.source = pinned
    return vm

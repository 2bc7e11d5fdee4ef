"""Contrastive pretraining of the tiny CLIP on captioned synthetic stills (`lss pretrain-tiny`).

A stand-in for CLIP's web pretraining, so the demo's "CLIP" knows the words of its world (where
the object is, its size, where it points, its shape and colour) before LSS adapts it to video.
Without it the tiny model's text tower knows no words, its concept spaces are random projections
and no method can be shown to learn on top of it.

- Data: `lss_cli.data.stills.draw_stills`, drawn afresh every step from a seeded generator (an
  endless stream; nothing is stored), so the run is reproducible from `seed` alone.
- Objective: open_clip's own symmetric InfoNCE (`ClipLoss`) with its learnable logit scale.
- Vocabulary: rows of the token embedding for tokens that never occur in the world's texts are
  zeroed and kept at zero (no gradient, no weight decay; with the default locked text tower
  nothing of it trains), so `save_compact` can store the model
  with only the rows it knows (~1 MB instead of the 12.6 MB the 49,408-token table takes) and
  `load_clip` restores the exact model from it. Unknown words then embed to zero plus position.
- Check: zero-shot accuracy per attribute on held-out stills, against chance.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lss_cli.data.augment import normalize
from lss_cli.data.stills import attribute_prompts, attribute_values, draw_stills, world_vocabulary
from lss_cli.errors import ConfigError
from lss_cli.models.clip import Clip, clip_loss, load_clip, save_compact
from lss_cli.runtime.outputs import check_output, write_output, write_text_atomic
from lss_cli.runtime.progress import log as progress_log


@dataclass(frozen=True)
class PretrainSettings:
    """What `lss pretrain-tiny` may change; the defaults made the shipped weights."""

    model: str = "lss-tiny"  # open_clip model name (a small ViT; the images are drawn at its input size)
    steps: int = 1500  # optimizer steps
    batch_size: int = 128  # image-caption pairs per step (InfoNCE negatives)
    lr: float = 3e-3  # AdamW peak lr (cosine decay after a linear warm-up)
    warmup: int = 100  # warm-up steps
    text_lr_scale: float = 0.0  # text tower lr / image lr; 0 = locked at its seeded init (trained jointly, it learnt to ignore position words)
    weight_decay: float = 0.05  # on matrices only (not biases, norms, embeddings, logit scale)
    seed: int = 0  # model initialisation and the stream of stills
    eval_images: int = 2000  # held-out stills for the attribute check (another seed)

    def validate(self) -> None:
        for name in ("steps", "batch_size", "eval_images"):
            if getattr(self, name) < 2:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 2, got {getattr(self, name)}")
        if not self.lr > 0 or self.warmup < 0:
            raise ConfigError(f"lr must be > 0 and warmup >= 0 (got lr={self.lr}, warmup={self.warmup})")


def _known_tokens(clip: Clip, texts: list[str]) -> torch.Tensor:
    """Sorted token ids occurring in `texts` (start/end/padding included)."""
    return torch.unique(clip.tokenizer(texts))


def _restrict_vocabulary(model: torch.nn.Module, known: torch.Tensor) -> torch.Tensor:
    """Zero the token rows outside `known` and keep them at zero; returns the row mask [V]."""
    table = model.token_embedding.weight  # [V, D]
    mask = torch.zeros(table.shape[0], dtype=torch.bool)
    mask[known] = True
    with torch.no_grad():
        table[~mask] = 0
    if table.requires_grad:  # a trained text tower: unknown rows get no gradient (weight decay skips embeddings)
        table.register_hook(lambda grad: grad * mask[:, None].to(grad.dtype))
    return mask


def _is_text(name: str) -> bool:
    return not name.startswith("visual.") and "logit_scale" not in name


def _param_groups(model: torch.nn.Module, s: PretrainSettings) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices only; the text tower at `text_lr_scale` x the lr. A locked
    text tower (scale 0) is frozen instead: no gradients computed, no optimizer state."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        text = _is_text(name)
        if text and s.text_lr_scale == 0:
            p.requires_grad_(False)
            continue
        no_decay = p.ndim < 2 or "embedding" in name or "logit_scale" in name
        groups.setdefault((no_decay, text), []).append(p)
    return [{"params": ps, "weight_decay": 0.0 if no_decay else s.weight_decay,
             "lr_scale": s.text_lr_scale if text else 1.0} for (no_decay, text), ps in groups.items()]


def _lr_at(step: int, s: PretrainSettings) -> float:
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    progress = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * 0.5 * (1 + math.cos(math.pi * progress))


def pretrain(s: PretrainSettings, log: Callable[[str], None] | None = None) -> tuple[Clip, dict[str, Any]]:
    """Train; returns the model (eval mode) and a report (settings, loss curve, attribute check)."""
    log = log or progress_log
    torch.manual_seed(s.seed)
    clip = load_clip(s.model, pretrained=None, seed=s.seed)
    model = clip.model.train()
    opt = torch.optim.AdamW(_param_groups(model, s), lr=s.lr, betas=(0.9, 0.98), eps=1e-6)
    known = _known_tokens(clip, world_vocabulary())
    _restrict_vocabulary(model, known)
    loss_fn = clip_loss()
    g = torch.Generator().manual_seed(s.seed)
    curve, start = [], time.perf_counter()
    for step in range(s.steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, s) * group["lr_scale"]
        batch = draw_stills(s.batch_size, clip.image_size, g)
        images = normalize(batch.images.float() / 255, clip.mean, clip.std)  # [N, 3, S, S]
        image_features, text_features, logit_scale = model(images, clip.tokenizer(batch.captions))[:3]
        loss = loss_fn(image_features, text_features, logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():  # open_clip's clamp: the scale may not exceed 100
            model.logit_scale.clamp_(0, math.log(100))
        if step % 50 == 0 or step == s.steps - 1:
            curve.append({"step": step, "loss": round(float(loss.detach()), 4)})
            log(f"pretrain step {step}/{s.steps} loss {float(loss.detach()):.3f} "
                f"({time.perf_counter() - start:.0f} s)")
    model.eval()
    report = {"settings": asdict(s), "threads": torch.get_num_threads(), "loss_curve": curve,
              "seconds": round(time.perf_counter() - start, 1), "known_tokens": len(known),
              "attributes": attribute_accuracy(clip, s.eval_images, seed=s.seed + 1)}
    return clip, report


@torch.no_grad()
def attribute_accuracy(clip: Clip, n: int, seed: int) -> dict[str, dict[str, float]]:
    """Zero-shot accuracy per attribute on n held-out stills: the "knows its words" check."""
    model = clip.model.eval()
    batch = draw_stills(n, clip.image_size, torch.Generator().manual_seed(seed))
    images = normalize(batch.images.float() / 255, clip.mean, clip.std)  # [N, 3, S, S]
    img = F.normalize(model.encode_image(images), dim=-1)  # [N, D]
    result = {}
    for name, prompts in attribute_prompts().items():
        txt = F.normalize(model.encode_text(clip.tokenizer(prompts)), dim=-1)  # [A, D]
        pred = (img @ txt.T).argmax(1)
        acc = float((pred == batch.attributes[name]).double().mean())
        result[name] = {"accuracy": round(acc, 4), "chance": round(1 / len(attribute_values()[name]), 4)}
    return result


def pretrain_to_file(s: PretrainSettings, out: str | Path, argv: list[str] | None = None) -> dict[str, Any]:
    """`lss pretrain-tiny`: pretrain, write the compact weights file (its report and the command
    line in the file's metadata) and `<out>.json` beside it; returns the report."""
    out = check_output(out, "pretrained weights")  # an unwritable --out fails before minutes of training
    clip, report = pretrain(s)
    report["command"] = " ".join(argv if argv is not None else ["lss", *sys.argv[1:]])
    report["weights"] = str(out)
    # Atomic, so a killed run never leaves a truncated weights file under the final name; an
    # unwritable --out by now (disk full) saves the weights in a temp folder and says where.
    write_output(out, lambda p: save_compact(clip.model, p, {"lss_pretrain": json.dumps(report)}),
                 what="pretrained weights")
    write_output(out.with_suffix(".json"), lambda p: write_text_atomic(p, json.dumps(report, indent=2) + "\n"),
                 what="pretraining report")
    return report

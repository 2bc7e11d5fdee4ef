"""Text encoding with the frozen CLIP text tower: the truncation check and the category bank.

`build_category_bank` is open_clip's zero-shot-classifier construction (each name through every
template, normalised, averaged, normalised again), stored `[K, D]` instead of open_clip's
`[D, K]`; zero-shot evaluation builds its classifier with it too, so training and evaluation
see the same category vectors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from lss_cli.concepts.templates import TemplateSet, render_prompts
from lss_cli.errors import ConfigError

if TYPE_CHECKING:
    from lss_cli.models.clip import Clip

Progress = Callable[[int], None]  # called with the number of texts just encoded


def _model_device(clip: Clip) -> torch.device:
    return next(clip.model.parameters()).device


def _batches(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def tokenize_checked(clip: Clip, texts: Sequence[str], batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens `[N, ctx]` int64 exactly as `clip.tokenizer(texts)` gives them, `[N]` bool: which
    texts do not fit the text context and are cut by the tokenizer). Pass the tokens on to
    `encode_texts` so the texts are not tokenised again.

    open_clip's tokenizers truncate silently. A text fits in `ctx` tokens exactly when its
    tokenization at `ctx` equals the first `ctx` tokens of its tokenization at `ctx + 1`
    (a cut text ends in an end-of-text token where the longer one still has a word).
    """
    ctx = int(getattr(clip.tokenizer, "context_length", None) or clip.context_length)
    tokens, flags = [], []
    for chunk in _batches(list(texts), batch_size):
        short = clip.tokenizer(list(chunk))  # [B, ctx]
        longer = clip.tokenizer(list(chunk), context_length=ctx + 1)  # [B, ctx + 1]
        tokens.append(short)
        flags.append((short != longer[:, :ctx]).any(dim=1))
    if not tokens:
        return torch.zeros(0, ctx, dtype=torch.long), torch.zeros(0, dtype=torch.bool)
    return torch.cat(tokens), torch.cat(flags)


def truncated_mask(clip: Clip, texts: Sequence[str], batch_size: int = 1024) -> torch.Tensor:
    """`[N]` bool: which texts do not fit the text context (see `tokenize_checked`)."""
    return tokenize_checked(clip, texts, batch_size)[1]


def encode_texts(clip: Clip, texts: Sequence[str], batch_size: int = 256, device: str | torch.device | None = None,
                 progress: Progress | None = None, tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Encode texts with the frozen text tower: `[N, D]` float32 on CPU, unit rows.

    Batched, under `torch.inference_mode`. `device` is where tokens go (default: the model's
    device). `tokens`: the texts already tokenised (`tokenize_checked`), `[N, ctx]`. The result is
    an ordinary tensor (usable in autograd graphs as a constant).
    """
    texts = list(texts)
    if tokens is not None and len(tokens) != len(texts):
        raise ValueError(f"{len(tokens)} token rows for {len(texts)} texts")
    device = torch.device(device) if device is not None else _model_device(clip)
    parts = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            batch = tokens[start:start + batch_size] if tokens is not None else clip.tokenizer(chunk)  # [B, ctx]
            emb = clip.model.encode_text(batch.to(device)).float()  # [B, D]
            parts.append(F.normalize(emb, dim=-1).cpu())
            if progress is not None:
                progress(len(chunk))
    if not parts:
        return torch.zeros(0, clip.embed_dim)
    return torch.cat(parts).clone()  # outside inference mode: a normal tensor


def build_category_bank(clip: Clip, names: Sequence[str], templates: Sequence[str] | TemplateSet,
                        batch_size: int = 256, device: str | torch.device | None = None,
                        progress: Progress | None = None, tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Category vectors `[K, D]` (float32, CPU, unit rows): the template-ensemble text embedding.

    Each name is rendered through every template, encoded and L2-normalised; the T vectors of a
    name are averaged and the mean normalised again. Zero-shot classification scores videos
    against exactly these rows (`z @ bank.T`). `tokens`: the prompts `render_prompts(names,
    templates)` already tokenised, `[K * T, ctx]`.
    """
    templates = templates.templates if isinstance(templates, TemplateSet) else tuple(templates)
    if not names or not templates:
        raise ConfigError("need at least one category name and one template")
    emb = encode_texts(clip, render_prompts(names, templates), batch_size, device, progress, tokens)  # [K*T, D]
    emb = emb.view(len(names), len(templates), -1).mean(dim=1)  # [K, D]
    return F.normalize(emb, dim=-1)

"""Text encoding with the frozen CLIP text tower: the truncation check and the category bank.

`build_category_bank` is open_clip's zero-shot-classifier construction (each name through every
template, normalised, averaged, normalised again), stored `[K, D]` instead of open_clip's
`[D, K]`; zero-shot evaluation builds its classifier with it too, so training and evaluation
see the same category vectors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial

import torch
import torch.nn.functional as F

from lss_cli.concepts.templates import TemplateSet, render_prompts
from lss_cli.errors import ConfigError
from lss_cli.models.clip import Clip, encode_text_trimmed, text_pool_positions, text_trim_refusal

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
                 progress: Progress | None = None, tokens: torch.Tensor | None = None,
                 trim: bool = True) -> torch.Tensor:
    """Encode texts with the frozen text tower: `[N, D]` float32 on CPU, unit rows, in `texts` order.

    Batched, under `torch.inference_mode`. `device` is where tokens go (default: the model's
    device). `tokens`: the texts already tokenised (`tokenize_checked`), `[N, ctx]`. The result is
    an ordinary tensor (usable in autograd graphs as a constant).

    `trim`: where it is exact (a causal text tower read at the end-of-text token, checked by
    `text_trim_refusal`), the texts are encoded shortest first and each batch only up to its
    longest text, not over the whole 77-token context: a prompt or a description is 10-30 tokens,
    so this is several times faster, on a GPU too. The embeddings equal the full-context ones to
    float rounding (tests/test_text_speed.py). `trim=False` or another tower: the whole context.
    """
    texts = list(texts)
    if tokens is not None and len(tokens) != len(texts):
        raise ValueError(f"{len(tokens)} token rows for {len(texts)} texts")
    if not texts:
        return torch.zeros(0, clip.embed_dim)
    if tokens is None:
        tokens = torch.cat([clip.tokenizer(list(chunk)) for chunk in _batches(texts, 1024)])  # [N, ctx]
    device = torch.device(device) if device is not None else _model_device(clip)
    trim = trim and text_trim_refusal(clip.model) is None
    # Similar lengths share a batch, so a batch's longest text is close to its others (stable: ties
    # keep their order).
    order = torch.argsort(text_pool_positions(clip.model, tokens), stable=True) if trim else torch.arange(len(texts))
    encode = partial(encode_text_trimmed, clip.model) if trim else clip.model.encode_text
    parts = []
    with torch.inference_mode():
        for rows in order.split(batch_size):
            emb = encode(tokens[rows].to(device)).float()  # [B, D]
            parts.append(F.normalize(emb, dim=-1).cpu())
            if progress is not None:
                progress(len(rows))
    out = torch.empty(len(texts), parts[0].shape[1])  # outside inference mode: a normal tensor
    out[order] = torch.cat(parts)
    return out


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

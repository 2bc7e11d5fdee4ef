"""A model reply -> the class's descriptions, or `InvalidReply` saying why the reply cannot be used.

A reply is parsed as the prompt's format says (JSON, leniently, or one description a line),
cleaned of numbering, bullets and wrapping quotes, de-duplicated, and each description checked
against CLIP's 77-token context (CLIP silently drops the rest, so a longer text would be encoded
cut short). The reason of an `InvalidReply` is sent back to the model when the class is re-asked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from typing import Any

from lss_cli.describe.bpe import clip_token_counts

CLIP_CONTEXT = 77  # tokens CLIP's text tower reads, start and end tokens included
# CLIP's BPE never makes more tokens than a text has non-space bytes, so an ASCII text with at
# most 75 non-space characters fits for certain and needs no tokenizer.
_SURELY_FITS_CHARS = CLIP_CONTEXT - 2
_BULLET = re.compile(r"^(?:[-*•·–—>]+|\(?\d{1,3}[.):\]]|#\d{1,3}[.:]?)\s*")
_QUOTES = "\"'“”‘’`"


class InvalidReply(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ClipLengthCheck:
    """Which texts are too long for CLIP's 77-token context.

    Exact: long or non-ASCII texts are counted with CLIP's BPE tokenizer (the one of ViT-B-16 and
    most open_clip models) as `describe/bpe.py` implements it, without importing torch (open_clip
    would take ~5 s to import); its vocabulary is read on first use. Short ASCII texts are cleared
    without counting (see `_SURELY_FITS_CHARS`). `counter`: another counting function (tests).
    """

    def __init__(self, counter: Callable[[list[str]], list[int]] | None = None):
        self._counter = counter

    def too_long(self, texts: list[str]) -> list[bool]:
        unsure = [i for i, t in enumerate(texts) if not surely_fits_clip(t)]
        flags = [False] * len(texts)
        if unsure:
            counts = self._count()([texts[i] for i in unsure])
            for i, c in zip(unsure, counts, strict=True):
                flags[i] = c > CLIP_CONTEXT
        return flags

    def _count(self) -> Callable[[list[str]], list[int]]:
        return self._counter or clip_token_counts  # looked up per call: benchmarks swap it for the old one


def surely_fits_clip(text: str) -> bool:
    return text.isascii() and sum(not c.isspace() for c in text) <= _SURELY_FITS_CHARS


def clean_description(text: str) -> str:
    """Strip numbering, bullets, wrapping quotes and extra whitespace."""
    text = " ".join(text.split())
    while True:
        stripped = _BULLET.sub("", text, count=1).strip()
        if len(stripped) >= 2 and stripped[0] in _QUOTES and stripped[-1] in _QUOTES:
            stripped = stripped[1:-1].strip()
        if stripped == text:
            return text
        text = stripped


def _dedup_key(text: str) -> str:
    return text.lower().rstrip(" .!").strip()


def reply_items(text: str | None, fmt: str) -> list[str]:
    """The raw description strings of a reply, as the prompt's format says to read them."""
    if text is None or not text.strip():
        raise InvalidReply("the reply was empty")
    if fmt == "lines":
        return text.splitlines()
    obj = _loads_lenient(text)
    if isinstance(obj, dict):
        lists = [v for v in obj.values() if isinstance(v, list)]
        obj = obj["descriptions"] if "descriptions" in obj else (lists[0] if len(lists) == 1 else None)
    if not isinstance(obj, list):
        raise InvalidReply('the JSON has no "descriptions" list')
    if not all(isinstance(x, str) for x in obj):
        raise InvalidReply('"descriptions" must be a list of strings')
    return obj


def _loads_lenient(text: str) -> Any:  # any JSON value: the caller checks its shape
    """JSON, also when wrapped in a ``` fence or in a sentence of chatter."""
    body = re.sub(r"^```[A-Za-z]*\s*|\s*```$", "", text.strip())
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        pass
    starts = [i for i in (body.find("{"), body.find("[")) if i >= 0]
    end = max(body.rfind("}"), body.rfind("]"))
    if starts and end > min(starts):
        try:
            return json.loads(body[min(starts):end + 1])
        except json.JSONDecodeError:
            pass
    raise InvalidReply("the reply is not valid JSON")


def extract_descriptions(text: str | None, n: int, fmt: str, length_check: ClipLengthCheck,
                         finish_reason: str | None = None) -> list[str]:
    """The first `n` usable descriptions of a reply, or InvalidReply saying why there are too few."""
    try:
        items = reply_items(text, fmt)
    except InvalidReply as e:
        if finish_reason == "length":
            raise InvalidReply(f"{e.reason} (the reply was cut off at max_tokens)") from None
        raise
    kept, dupes = _unique(map(clean_description, items))
    flags = length_check.too_long(kept)
    long_ = sum(flags)
    kept = [d for d, bad in zip(kept, flags, strict=True) if not bad]
    if len(kept) < n:
        notes = ([f"{dupes} duplicate(s)"] if dupes else []) + (
            [f"{long_} longer than CLIP's {CLIP_CONTEXT}-token context"] if long_ else [])
        raise InvalidReply(f"{len(kept)} usable descriptions, {n} asked for"
                           + (f" ({', '.join(notes)} dropped)" if notes else ""))
    return kept[:n]


def _unique(items: Iterable[str]) -> tuple[list[str], int]:
    """(the non-empty items, first of each case- and end-punctuation-blind duplicate, in order;
    how many duplicates were dropped)."""
    kept, seen, dupes = [], set(), 0
    for item in items:
        key = _dedup_key(item)
        if key in seen:
            dupes += 1
        elif key:
            seen.add(key)
            kept.append(item)
    return kept, dupes


def reask_message(reason: str, n: int, fmt: str) -> str:
    shape = 'a JSON object {"descriptions": [...]}' if fmt == "json" else "one description per line"
    return (f"Your reply could not be used: {reason}. Reply again with exactly {n} different "
            f"descriptions, each one short sentence, as {shape} and nothing else.")

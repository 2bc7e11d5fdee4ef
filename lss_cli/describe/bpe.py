"""CLIP's byte-pair tokenizer without torch: how many tokens a text takes in CLIP's text context.

`lss describe` rejects descriptions longer than CLIP's 77 tokens. open_clip's tokenizer counts
them exactly, but importing open_clip imports torch, about 5 s: a third of a whole run against a
fast server. This module gives the same tokens from the same data: the merges file shipped inside
the open_clip package (found without importing it), the same text cleaning (ftfy, HTML entities
unescaped twice, whitespace collapsed, lower case) and the same word pattern, with the `regex`
module that understands `\\p{L}`. `tests/test_text_speed.py` checks ids and counts against
open_clip's `SimpleTokenizer` on the label sets, descriptions and unicode edge cases.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import ftfy
import regex

from lss_cli.errors import LssError

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"  # in the open_clip package folder (OpenAI's file)
NUM_MERGES = 49152 - 256 - 2  # CLIP's vocabulary: 2 x 256 byte symbols + these merges + 2 specials = 49408
START, END = "<start_of_text>", "<end_of_text>"
END_OF_WORD = "</w>"
# A text is cut into words first, each then merged on its own: the special tokens as they are,
# English contractions, runs of letters, single digits, runs of other non-space symbols.
_WORDS = regex.compile(rf"{START}|{END}|'s|'t|'re|'ve|'m|'ll|'d|\p{{L}}+|\p{{N}}|[^\s\p{{L}}\p{{N}}]+",
                       regex.IGNORECASE)


# Bytes that are visible Latin-1 characters stand for themselves; the others (spaces, controls)
# get the code points 256, 257, ... in byte order, so no symbol is blank or whitespace.
_VISIBLE = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]


def _byte_tables() -> tuple[list[int], list[str]]:
    """(the bytes in vocabulary order: visible ones first; the symbol of each byte value 0..255)."""
    visible = set(_VISIBLE)
    hidden = [b for b in range(256) if b not in visible]
    symbol = [""] * 256
    for b in _VISIBLE:
        symbol[b] = chr(b)
    for i, b in enumerate(hidden):
        symbol[b] = chr(256 + i)
    return _VISIBLE + hidden, symbol


@dataclass(frozen=True)
class _Vocabulary:
    byte_symbol: list[str]  # byte value -> its one-character symbol
    ranks: dict[tuple[str, str], int]  # a mergeable pair -> its priority (lower merges first)
    ids: dict[str, int]  # symbol or merged symbol -> token id, as open_clip numbers them


def vocabulary_path() -> Path:
    """The merges file inside the installed open_clip package, found without importing open_clip."""
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / VOCAB_FILE
        if path.is_file():
            return path
    raise LssError(f"CLIP's vocabulary file {VOCAB_FILE} was not found in the open_clip package",
                   hint="reinstall open_clip_torch (pip install --force-reinstall open_clip_torch)")


def _load(path: Path) -> _Vocabulary:
    lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]  # line 0 is a version header
    order, symbol = _byte_tables()
    singles = [symbol[b] for b in order]
    names = singles + [s + END_OF_WORD for s in singles] + ["".join(m) for m in merges] + [START, END]
    return _Vocabulary(symbol, {m: i for i, m in enumerate(merges)}, {n: i for i, n in enumerate(names)})


class ClipBPE:
    """CLIP's tokenizer (the one of ViT-B-16 and most open_clip models) for counting: `ids` is
    open_clip's `SimpleTokenizer.encode`, `counts` adds the start and end tokens. The vocabulary is
    read on first use (~0.3 s), once, also when threads ask at the same time."""

    def __init__(self, path: Path | None = None):
        self._path = path
        self._vocab: _Vocabulary | None = None
        self._lock = threading.Lock()
        self._words: dict[str, tuple[str, ...]] = {}  # cache: a word's symbols -> its merged pieces

    def _vocabulary(self) -> _Vocabulary:
        with self._lock:
            if self._vocab is None:
                self._vocab = _load(self._path or vocabulary_path())
        return self._vocab

    def ids(self, text: str) -> list[int]:
        vocab = self._vocabulary()
        out: list[int] = []
        for word in _WORDS.findall(clean(text)):
            out.extend(vocab.ids[piece] for piece in self._pieces(word, vocab))
        return out

    def counts(self, texts: Iterable[str]) -> list[int]:
        """Tokens each text takes in CLIP's context, start and end tokens included (uncut)."""
        return [len(self.ids(t)) + 2 for t in texts]

    def _pieces(self, word: str, vocab: _Vocabulary) -> tuple[str, ...]:
        if word in (START, END):
            return (word,)
        symbols = "".join(vocab.byte_symbol[b] for b in word.encode("utf-8"))
        cached = self._words.get(symbols)
        if cached is None:
            cached = self._words[symbols] = _merge([*symbols[:-1], symbols[-1] + END_OF_WORD], vocab.ranks)
        return cached


def _merge(parts: list[str], ranks: dict[tuple[str, str], int]) -> tuple[str, ...]:
    """Byte-pair merging: while some neighbouring pair is in the merge list, join every
    occurrence (left to right, not overlapping) of the pair listed earliest."""
    while len(parts) > 1:
        best = min(zip(parts, parts[1:], strict=False), key=lambda pair: ranks.get(pair, NUM_MERGES))
        if best not in ranks:
            break
        joined, i = [], 0
        while i < len(parts):
            if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                joined.append(parts[i] + parts[i + 1])
                i += 2
            else:
                joined.append(parts[i])
                i += 1
        parts = joined
    return tuple(parts)


def clean(text: str) -> str:
    """CLIP's text cleaning: mojibake and odd unicode fixed (ftfy), HTML entities unescaped (twice,
    for doubly escaped text), whitespace runs made one space, ends trimmed, lower case."""
    return " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).split()).lower()


_DEFAULT = ClipBPE()


def clip_token_counts(texts: Iterable[str]) -> list[int]:
    """Tokens each text takes in CLIP's text context (start and end tokens included), without
    importing torch; equal to `lss_cli.models.clip.clip_token_counts`."""
    return _DEFAULT.counts(texts)

"""The inputs of `lss build-concepts`, read and checked before any model is loaded.

The label set gives the category rows `[0, K0)` in its order; extra words follow. Descriptions
are grouped by owning category (category order, then file order), repeats inside one category
dropped, then the extra sentences follow with owner -1. Every input's provenance (path or
origin, sha256) goes into the bank's metadata.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lss_cli.concepts.templates import TemplateSet, load_templates, text_sha256
from lss_cli.describe.records import read_records
from lss_cli.errors import ConfigError, InputFileError
from lss_cli.hashing import file_sha256
from lss_cli.labels import load_label_set
from lss_cli.textfiles import read_text

if TYPE_CHECKING:
    from lss_cli.config import ConceptsConfig
    from lss_cli.describe.records import DescriptionRecord


def read_text_list(path: str | Path, what: str) -> list[str]:
    """One entry per line; blank lines and `#` comments skipped; surrounding whitespace stripped."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{what} file not found: {path}", hint="check the path (one entry per line)")
    lines = (line.strip() for line in read_text(path, f"{what} file").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


@dataclass
class ConceptInputs:
    """Everything `build-concepts` encodes, read and checked, before any model is loaded."""

    label_names: list[str]  # the label set, in its order (category rows [0, K0))
    extra_words: list[str]  # vocabulary expansion: extra category rows, owning no descriptions
    description_texts: list[str]  # owned descriptions (grouped by category), then extra sentences
    description_owner: list[int]  # category index per description; -1 for extra sentences
    templates: TemplateSet
    missing: list[str]  # label categories with no descriptions (only with allow_missing)
    dropped_duplicates: int  # repeated descriptions of one category / repeated extra sentences
    sources: dict[str, Any]  # provenance of every input (path or origin + sha256), JSON for the metadata

    @property
    def category_names(self) -> list[str]:
        return self.label_names + self.extra_words

    def counts(self) -> dict[str, int]:
        unowned = sum(1 for o in self.description_owner if o < 0)
        return {
            "categories": len(self.category_names), "label_categories": len(self.label_names),
            "extra_words": len(self.extra_words), "descriptions": len(self.description_texts),
            "owned_descriptions": len(self.description_texts) - unowned, "extra_sentences": unowned,
            "templates": len(self.templates.templates),
            "category_prompts": len(self.category_names) * len(self.templates.templates),
            "missing_categories": len(self.missing), "dropped_duplicates": self.dropped_duplicates,
        }


def _list_some(items: Sequence[str], n: int = 10) -> str:
    shown = ", ".join(repr(x) for x in items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def _check_extra_words(label_names: list[str], words: list[str], path: str) -> None:
    seen = set(label_names)
    for w in words:
        if w in seen:
            where = "the label set" if w in label_names else "earlier in the file"
            raise InputFileError(f"{path}: extra word {w!r} duplicates a category name ({where})",
                                 hint="every category name must be unique; remove the repeat")
        seen.add(w)


def _group_descriptions(records: list[DescriptionRecord], label_names: list[str], extra_words: list[str],
                        path: str) -> tuple[dict[int, list[str]], int]:
    """Descriptions per label index, with repeats inside one category dropped (and counted)."""
    index = {n: i for i, n in enumerate(label_names)}
    unknown = [r.category for r in records if r.category not in index]
    if unknown:
        close = difflib.get_close_matches(unknown[0], label_names, n=3)
        extra = [u for u in unknown if u in extra_words]
        hint = (f"did you mean {', '.join(map(repr, close))} for {unknown[0]!r}? " if close else "") + (
            "extra words own no descriptions; put such names in the label set instead" if extra
            else "descriptions must use the label set's exact names; check --labels")
        raise InputFileError(f"{path}: {len(unknown)} described categor{'y is' if len(unknown) == 1 else 'ies are'} "
                             f"not in the label set: {_list_some(unknown)}", hint=hint)
    owner_of: dict[str, int] = {}
    grouped: dict[int, list[str]] = {}
    dropped = 0
    for rec in records:
        k = index[rec.category]
        for raw in rec.descriptions:
            text = raw.strip()
            if not text:
                raise InputFileError(f"{path}: an empty description for {rec.category!r}",
                                     hint="remove it, or run `lss describe` again for that class")
            if text in owner_of:
                if owner_of[text] != k:
                    raise InputFileError(
                        f"{path}: the description {text!r} is given for both {label_names[owner_of[text]]!r} "
                        f"and {rec.category!r}", hint="a description must belong to one category; edit one of them")
                dropped += 1
                continue
            owner_of[text] = k
            grouped.setdefault(k, []).append(text)
    return grouped, dropped


def _extra_sentences(path: str | None, known: Sequence[str]) -> tuple[list[str], int]:
    """(the extra sentences not already in `known` or earlier in the file, how many were dropped)."""
    if not path:
        return [], 0
    seen = set(known)
    sentences: list[str] = []
    dropped = 0
    for s in read_text_list(path, "extra sentences"):
        if s in seen:
            dropped += 1  # already in the description space: adding it again would double its weight
            continue
        seen.add(s)
        sentences.append(s)
    return sentences, dropped


def gather_inputs(cfg: ConceptsConfig) -> ConceptInputs:
    """Read and check every input of `build-concepts`; cheap (no torch, no model)."""
    if cfg.descriptions is None:
        raise ConfigError("no descriptions file given",
                          hint="pass --descriptions FILE (written by `lss describe`, or the synthetic "
                               "dataset's descriptions.jsonl)")
    labels = load_label_set(cfg.labels)
    label_names = list(labels.names)
    templates = load_templates(cfg.templates)
    extra_words = read_text_list(cfg.extra_words, "extra words") if cfg.extra_words else []
    _check_extra_words(label_names, extra_words, str(cfg.extra_words))
    records, torn = read_records(cfg.descriptions)
    grouped, dropped = _group_descriptions(records, label_names, extra_words, cfg.descriptions)
    missing = [n for i, n in enumerate(label_names) if not grouped.get(i)]
    if missing and not cfg.allow_missing:
        raise InputFileError(
            f"{len(missing)} of {len(label_names)} categories have no descriptions in {cfg.descriptions}: "
            f"{_list_some(missing)}",
            hint="run `lss describe` again (it resumes and fills the gaps), or pass --allow-missing "
                 "(those categories then take part in concept distillation only)")
    texts = [t for i in range(len(label_names)) for t in grouped.get(i, [])]
    owner = [i for i in range(len(label_names)) for _ in grouped.get(i, [])]
    if not texts and not (cfg.allow_missing and cfg.extra_sentences):
        raise InputFileError(f"{cfg.descriptions}: no descriptions at all",
                             hint="check the file (with --allow-missing, --extra-sentences alone may fill the "
                                  "description space: an ablation without class descriptions)")
    sentences, dropped_sentences = _extra_sentences(cfg.extra_sentences, texts)
    sources = {
        "labels": {"source": labels.source, "names_sha256": text_sha256(label_names)},
        "descriptions": {"path": str(cfg.descriptions), "sha256": file_sha256(cfg.descriptions),
                         "records": len(records), "torn_lines": torn,
                         "writers": sorted({r.model for r in records})},
        "templates": {"path": templates.path, "sha256": templates.sha256, "name": templates.name,
                      "version": templates.version},
        "extra_words": _file_source(cfg.extra_words),
        "extra_sentences": _file_source(cfg.extra_sentences),
    }
    return ConceptInputs(label_names, extra_words, texts + sentences, owner + [-1] * len(sentences),
                         templates, missing, dropped + dropped_sentences, sources)


def _file_source(path: str | None) -> dict[str, str] | None:
    return None if path is None else {"path": str(path), "sha256": file_sha256(path)}

"""The concept bank and its file format (`concepts.safetensors`), with every consistency check.

The file holds the tensors `category` `[K, D]` float32, `description` `[M, D]` float32 (unit
rows both), `description_owner` `[M]` int64, `category_ca_mask` `[K]` bool and
`description_ca_mask` `[M]` bool, and metadata whose every value is a JSON string: names,
description texts, templates, model name, pretrained tag, weights id (`weights-sha256:` of the
loaded tensors, `lss_cli.models.clip.weights_content_id`) and weights source (tag, weights-file
sha256 or random-init seed), sha256 of every input, lss_cli version, counts of truncated texts.
`load_concept_bank` validates all of it and refuses a bank built with another CLIP model or other
weights than the one it is used with. Banks written before weights were identified by content
(no `weights_source`) carry the source form as their id; they are accepted when the model's
source matches it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from lss_cli.errors import ConfigError, InputFileError
from lss_cli.runtime.outputs import write_output
from lss_cli.runtime.progress import log
from lss_cli.runtime.tensor_io import save_safetensors

FORMAT = "lss-concepts"
FORMAT_VERSION = 1
NORM_TOLERANCE = 1e-3  # |row norm - 1| allowed on load; float32 normalisation is good to ~1e-6


class ConceptBankMismatchError(ConfigError):
    """The bank was built with another CLIP model (or other weights) than the one it is used with."""


@dataclass
class ConceptBank:
    """Category and description concept banks with their provenance (see `lss_cli.concepts`)."""

    category: torch.Tensor  # [K, D] float32, unit rows
    description: torch.Tensor  # [M, D] float32, unit rows
    description_owner: torch.Tensor  # [M] int64: owning category in [0, K), or -1 (extra sentence)
    category_names: list[str]  # K names; the first num_label_categories are the label set
    description_texts: list[str]  # M texts
    num_label_categories: int  # rows [0, this) = label ids; the rest are extra words
    metadata: dict[str, Any] = field(default_factory=dict)  # model, weights, templates, sources, counts

    @property
    def K(self) -> int:  # noqa: N802 (the paper's symbols)
        return int(self.category.shape[0])

    @property
    def M(self) -> int:  # noqa: N802
        return int(self.description.shape[0])

    @property
    def D(self) -> int:  # noqa: N802
        return int(self.category.shape[1])

    @property
    def model(self) -> str | None:
        return self.metadata.get("model")

    @property
    def weights_id(self) -> str | None:
        return self.metadata.get("weights_id")

    @property
    def weights_source(self) -> str | None:
        """How the bank's weights were named (tag, file sha256, random-init seed); None in old banks."""
        return self.metadata.get("weights_source")

    @property
    def category_ca_mask(self) -> torch.Tensor:
        """`[K]` bool: the category owns >= 1 description (takes part in concept alignment)."""
        owned = self.description_owner[self.description_owner >= 0]
        return torch.bincount(owned, minlength=self.K) > 0

    @property
    def description_ca_mask(self) -> torch.Tensor:
        """`[M]` bool: the description has an owner (takes part in concept alignment)."""
        return self.description_owner >= 0

    def check_model(self, model: str | None = None, weights: str | None = None, where: str = "concept bank",
                    weights_source: str | None = None) -> None:
        """Refuse use with another CLIP model / weights than the bank was built with.

        `weights` is the model's `Clip.weights_id` (its content), `weights_source` its
        `Clip.weights_source`: a bank from before content ids recorded the source form as its id,
        and is accepted when that matches (a note says so)."""
        if model is not None and model != self.model:
            raise ConceptBankMismatchError(
                f"{where} was built with CLIP model {self.model!r}, but it is used with {model!r}",
                hint=f"rebuild it with `lss build-concepts --model {model}` or use model {self.model!r}")
        if weights is None or weights == self.weights_id:
            return
        legacy = self.weights_source is None  # written before content ids: its id is the source form
        if legacy and weights_source is not None and weights_source == self.weights_id:
            log(f"{where} predates weights ids by content; accepted by its weights source {self.weights_id!r} "
                "(rebuilding it records the content id, which also matches a tag and a file of the same weights)")
            return
        built = f"{self.weights_id!r}" + (f" ({self.weights_source})" if self.weights_source else "")
        used = f"{weights!r}" + (f" ({weights_source})" if weights_source else "")
        hint = ("the bank predates weights ids by content, so only the same --pretrained form matches it: "
                "rebuild it once with `lss build-concepts` (a tag and a local file of the same weights then match)"
                if legacy else "these are different weights: rebuild the bank with the model's --pretrained, "
                "or train with the weights the bank was built with")
        raise ConceptBankMismatchError(f"{where} was built with {self.model} weights {built}, but it is used with "
                                       f"{used}", hint=hint)


def _invalid(where: str, problem: str) -> InputFileError:
    return InputFileError(f"{where}: not a valid concept bank: {problem}",
                          hint="rebuild it with `lss build-concepts`")


def _check_unit_rows(x: torch.Tensor, name: str, where: str) -> None:
    if x.dtype != torch.float32:
        raise _invalid(where, f"{name} is {x.dtype}, expected float32")
    if not torch.isfinite(x).all():
        raise _invalid(where, f"{name} has non-finite values")
    if x.shape[0] and ((x.norm(dim=1) - 1).abs().max() > NORM_TOLERANCE):
        raise _invalid(where, f"{name} rows are not unit length")


def validate_bank(bank: ConceptBank, where: str = "concept bank") -> None:
    """Shapes, dtypes, finiteness, unit rows, owners and names consistent; raises InputFileError."""
    c, d, owner = bank.category, bank.description, bank.description_owner
    if c.ndim != 2 or d.ndim != 2 or c.shape[0] < 1 or d.shape[0] < 1:
        raise _invalid(where, f"expected category [K, D] and description [M, D], got {tuple(c.shape)}, {tuple(d.shape)}")
    if c.shape[1] != d.shape[1]:
        raise _invalid(where, f"category has D={c.shape[1]} but description D={d.shape[1]}")
    _check_unit_rows(c, "category", where)
    _check_unit_rows(d, "description", where)
    if owner.dtype != torch.int64 or tuple(owner.shape) != (bank.M,):
        raise _invalid(where, f"description_owner must be int64 [{bank.M}], got {owner.dtype} {tuple(owner.shape)}")
    if bank.M and (owner.min() < -1 or owner.max() >= bank.num_label_categories):
        raise _invalid(where, f"description_owner values must be -1 or label categories [0, {bank.num_label_categories})")
    if len(bank.category_names) != bank.K or len(bank.description_texts) != bank.M:
        raise _invalid(where, f"{len(bank.category_names)} names / {len(bank.description_texts)} texts for "
                              f"K={bank.K} / M={bank.M} rows")
    if len(set(bank.category_names)) != bank.K:
        raise _invalid(where, "duplicate category names")
    if not 1 <= bank.num_label_categories <= bank.K:
        raise _invalid(where, f"num_label_categories={bank.num_label_categories} outside [1, {bank.K}]")


def save_concept_bank(bank: ConceptBank, path: str | Path) -> Path:
    """Validate and write `bank` atomically (temporary file + rename); returns the path."""
    path = Path(path)
    validate_bank(bank, str(path))
    tensors = {
        "category": bank.category.detach().float().contiguous().cpu(),
        "description": bank.description.detach().float().contiguous().cpu(),
        "description_owner": bank.description_owner.detach().contiguous().cpu(),
        "category_ca_mask": bank.category_ca_mask.contiguous().cpu(),
        "description_ca_mask": bank.description_ca_mask.contiguous().cpu(),
    }
    meta = {**bank.metadata, "format": FORMAT, "format_version": FORMAT_VERSION,
            "category_names": bank.category_names, "description_texts": bank.description_texts,
            "num_label_categories": bank.num_label_categories}
    metadata = {k: json.dumps(v, ensure_ascii=False) for k, v in meta.items()}
    # An unwritable --out after the encoding: the bank goes to a temp folder and the error names it.
    return write_output(path, lambda p: save_safetensors(p, tensors, metadata), what="concept bank")


def _read_bank_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, metadata with every value JSON-decoded)."""
    try:
        with safe_open(str(path), framework="pt") as f:  # one open for metadata and tensors
            raw_meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
    except (SafetensorError, OSError) as e:
        raise _invalid(str(path), f"cannot read it as safetensors ({e})") from None
    try:
        meta = {k: json.loads(v) for k, v in raw_meta.items()}
    except json.JSONDecodeError as e:
        raise _invalid(str(path), f"metadata is not JSON ({e})") from None
    return tensors, meta


def load_concept_bank(path: str | Path, expect_model: str | None = None, expect_weights: str | None = None,
                      expect_dim: int | None = None, expect_weights_source: str | None = None) -> ConceptBank:
    """Read and validate a concept bank; with `expect_*`, refuse one built for another model.

    `expect_model` is the open_clip model name and `expect_weights` the `Clip.weights_id` of the
    model the bank will be used with; a mismatch raises `ConceptBankMismatchError` naming both.
    `expect_weights_source` (`Clip.weights_source`) lets a bank from before content ids match
    (`ConceptBank.check_model`).
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"concept bank not found: {path}", hint="build it with `lss build-concepts`")
    tensors, meta = _read_bank_file(path)
    if meta.get("format") != FORMAT:
        raise _invalid(str(path), f"metadata format is {meta.get('format')!r}, expected {FORMAT!r}")
    missing = [k for k in ("category", "description", "description_owner") if k not in tensors]
    missing += [k for k in ("category_names", "description_texts", "num_label_categories", "model", "weights_id")
                if k not in meta]
    if missing:
        raise _invalid(str(path), f"lacks {', '.join(missing)}")
    fields_ = {k: meta.pop(k) for k in ("category_names", "description_texts", "num_label_categories")}
    bank = ConceptBank(tensors["category"], tensors["description"], tensors["description_owner"],
                       metadata=meta, **fields_)
    validate_bank(bank, str(path))
    for key in ("category_ca_mask", "description_ca_mask"):
        if key in tensors and not torch.equal(tensors[key], getattr(bank, key)):
            raise _invalid(str(path), f"{key} disagrees with description_owner")
    if expect_dim is not None and bank.D != expect_dim:
        raise ConceptBankMismatchError(f"{path} has D={bank.D}, but the model embeds to D={expect_dim}",
                                       hint="rebuild the bank with the model you use")
    bank.check_model(expect_model, expect_weights, where=str(path), weights_source=expect_weights_source)
    return bank


def bank_summary(bank: ConceptBank, path: str | Path | None = None) -> dict[str, Any]:
    """What `lss concepts info` shows: sizes, model, sources, truncation."""
    meta = bank.metadata
    n_extra_sentences = int((bank.description_owner < 0).sum())
    return {
        "file": None if path is None else str(path),
        "K": bank.K, "M": bank.M, "D": bank.D,
        "label_categories": bank.num_label_categories, "extra_words": bank.K - bank.num_label_categories,
        "owned_descriptions": bank.M - n_extra_sentences, "extra_sentences": n_extra_sentences,
        "ca_categories": int(bank.category_ca_mask.sum()), "ca_descriptions": int(bank.description_ca_mask.sum()),
        "model": bank.model, "pretrained": meta.get("pretrained"), "weights_id": bank.weights_id,
        "weights_source": bank.weights_source,
        "templates": len(meta.get("templates", [])),
        "truncated_descriptions": meta.get("num_truncated"),
        "truncated_category_prompts": meta.get("num_truncated_category_prompts"),
        "missing_categories": meta.get("missing_categories", []),
        "sources": meta.get("sources", {}),
        "lss_cli_version": meta.get("lss_cli_version"), "created": meta.get("created"),
    }

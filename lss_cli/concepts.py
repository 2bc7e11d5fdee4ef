"""Concept banks: the frozen CLIP text tower's vectors LSS trains in (SPEC §3.2).

Two banks, both float32 with unit rows:

- `category` `[K, D]`: each category name rendered through every template of a template set,
  encoded, L2-normalised, averaged over the templates and normalised again (open_clip's
  zero-shot-classifier convention, stored `[K, D]` instead of open_clip's `[D, K]`).
  `build_category_bank` is also what zero-shot evaluation calls to build its classifier.
- `description` `[M, D]`: each description encoded and normalised; `description_owner` `[M]`
  (int64) is the index of the category it describes, or -1 for an unowned extra sentence.

Row order is fixed: categories `[0, num_label_categories)` are the label set in its own order
(row i = label id i), then the extra words in file order. Descriptions are grouped by owner in
category order (within a category, in file order), then the extra sentences in file order.

Vocabulary expansion and the losses (our definition; the paper leaves expansion open):

- **Concept distillation** uses the full banks: all K categories (extra words included) and all
  M descriptions (extra sentences included). The uniform prior acts on that full category
  distribution.
- **Concept alignment** needs the category <-> description relation, so it uses only the
  categories that own at least one description (`ConceptBank.category_ca_mask`, `[K]`) and
  the descriptions that have an owner (`description_ca_mask`, `[M]`). Its softmaxes are taken
  over those subsets, and description probabilities are aggregated to categories through
  `description_owner` (the loss, `lss_cli.train.losses.LSSLoss`, derives the sub-bank indices from
  `description_owner` alone). Without extra words/sentences and without missing categories the subsets
  are the whole banks and this is exactly the paper's concept alignment.

The file (`concepts.safetensors`) holds the tensors `category`, `description`, `description_owner`,
`category_ca_mask` `[K]` bool and `description_ca_mask` `[M]` bool, and metadata whose every value
is a JSON string: names, description texts, templates, model name, pretrained tag, weights id
(tag, weights-file sha256 or random-init seed), sha256 of every input, lss_cli version, counts of
truncated texts. `load_concept_bank` validates all of it and refuses a bank built with another
CLIP model than the one it is used with.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lss_cli.errors import ConfigError, InputFileError
from lss_cli.hashing import file_sha256

if TYPE_CHECKING:
    import torch

    from lss_cli.config import ConceptsConfig
    from lss_cli.models.clip import Clip

FORMAT = "lss-concepts"
FORMAT_VERSION = 1
NORM_TOLERANCE = 1e-3  # |row norm - 1| allowed on load; float32 normalisation is good to ~1e-6
Progress = Callable[[int], None]  # called with the number of texts just encoded


class ConceptBankMismatchError(ConfigError):
    """The bank was built with another CLIP model (or other weights) than the one it is used with."""


# --------------------------------------------------------------------------------------------
# Inputs: templates, word/sentence lists, descriptions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateSet:
    name: str  # the file's `name:`
    version: int | str  # the file's `version:`
    templates: tuple[str, ...]  # each holds exactly one `{}` for the category name
    path: str  # file it was read from
    sha256: str  # of that file

    def render(self, name: str) -> list[str]:
        return [t.format(name) for t in self.templates]


def text_sha256(lines: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def load_templates(name_or_path: str | Path) -> TemplateSet:
    """A template set: a name shipped in prompts/ (e.g. `action_templates_v1`) or a YAML path."""
    from lss_cli.resources import load_prompt_yaml

    hint = "a template file has `name:`, `version:` and `templates:`, a list of strings each with one {}"
    data, path, raw = load_prompt_yaml(name_or_path, what="template file", hint=hint)
    if not isinstance(data.get("templates"), list) or not data["templates"]:
        raise InputFileError(f"{path}: no `templates:` list found", hint=hint)
    templates = data["templates"]
    for i, t in enumerate(templates):
        if not isinstance(t, str) or t.count("{}") != 1 or set("{}") & set(t.replace("{}", "", 1)):
            raise InputFileError(f"{path}: template {i} ({t!r}) must be text with exactly one {{}} and no other braces",
                                 hint=hint)
    if len(set(templates)) != len(templates):
        dup = next(t for t in templates if templates.count(t) > 1)
        raise InputFileError(f"{path}: template {dup!r} appears more than once", hint="remove the repeat")
    return TemplateSet(str(data.get("name", path.stem)), data.get("version", 1), tuple(templates),
                       str(path), hashlib.sha256(raw).hexdigest())


def read_text_list(path: str | Path, what: str) -> list[str]:
    """One entry per line; blank lines and `#` comments skipped; surrounding whitespace stripped."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{what} file not found: {path}", hint="check the path (one entry per line)")
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
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
    sources: dict[str, Any]  # provenance of every input (path or origin + sha256)

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


def _group_descriptions(records: list, label_names: list[str], extra_words: list[str], path: str
                        ) -> tuple[dict[int, list[str]], int]:
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


def gather_inputs(cfg: ConceptsConfig) -> ConceptInputs:
    """Read and check every input of `build-concepts`; cheap (no torch, no model)."""
    from lss_cli.descriptions import read_records
    from lss_cli.labels import load_label_set

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
    sentences: list[str] = []
    if cfg.extra_sentences:
        seen = set(texts)
        for s in read_text_list(cfg.extra_sentences, "extra sentences"):
            if s in seen:
                dropped += 1  # already in the description space: adding it again would double its weight
                continue
            seen.add(s)
            sentences.append(s)
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
                         templates, missing, dropped, sources)


def _file_source(path: str | None) -> dict[str, str] | None:
    return None if path is None else {"path": str(path), "sha256": file_sha256(path)}


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


def _model_device(clip: Clip) -> torch.device:
    return next(clip.model.parameters()).device


def _batches(items: Sequence[str], size: int):
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
    import torch

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


def encode_texts(clip: Clip, texts: Sequence[str], batch_size: int = 256, device: Any = None,
                 progress: Progress | None = None, tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Encode texts with the frozen text tower: `[N, D]` float32 on CPU, unit rows.

    Batched, under `torch.inference_mode`. `device` is where tokens go (default: the model's
    device). `tokens`: the texts already tokenised (`tokenize_checked`), `[N, ctx]`. The result is
    an ordinary tensor (usable in autograd graphs as a constant).
    """
    import torch
    import torch.nn.functional as F

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


def render_prompts(names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Name-major prompts: `[name_0 x every template, name_1 x every template, ...]`."""
    return [t.format(n) for n in names for t in templates]


def build_category_bank(clip: Clip, names: Sequence[str], templates: Sequence[str] | TemplateSet,
                        batch_size: int = 256, device: Any = None, progress: Progress | None = None,
                        tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Category vectors `[K, D]` (float32, CPU, unit rows): the template-ensemble text embedding.

    Each name is rendered through every template, encoded and L2-normalised; the T vectors of a
    name are averaged and the mean normalised again. Zero-shot classification scores videos
    against exactly these rows (`z @ bank.T`). `tokens`: the prompts `render_prompts(names,
    templates)` already tokenised, `[K * T, ctx]`.
    """
    import torch.nn.functional as F

    templates = templates.templates if isinstance(templates, TemplateSet) else tuple(templates)
    if not names or not templates:
        raise ConfigError("need at least one category name and one template")
    emb = encode_texts(clip, render_prompts(names, templates), batch_size, device, progress, tokens)  # [K*T, D]
    emb = emb.view(len(names), len(templates), -1).mean(dim=1)  # [K, D]
    return F.normalize(emb, dim=-1)


# --------------------------------------------------------------------------------------------
# The bank, its file format and its checks
# --------------------------------------------------------------------------------------------


@dataclass
class ConceptBank:
    """Category and description concept banks with their provenance (see the module docstring)."""

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
    def category_ca_mask(self) -> torch.Tensor:
        """`[K]` bool: the category owns >= 1 description (takes part in concept alignment)."""
        import torch

        owned = self.description_owner[self.description_owner >= 0]
        return torch.bincount(owned, minlength=self.K) > 0

    @property
    def description_ca_mask(self) -> torch.Tensor:
        """`[M]` bool: the description has an owner (takes part in concept alignment)."""
        return self.description_owner >= 0

    def check_model(self, model: str | None = None, weights: str | None = None, where: str = "concept bank") -> None:
        """Refuse use with another CLIP model / weights than the bank was built with."""
        if model is not None and model != self.model:
            raise ConceptBankMismatchError(
                f"{where} was built with CLIP model {self.model!r}, but it is used with {model!r}",
                hint=f"rebuild it with `lss build-concepts --model {model}` or use model {self.model!r}")
        if weights is not None and weights != self.weights_id:
            raise ConceptBankMismatchError(
                f"{where} was built with {self.model} weights {self.weights_id!r}, but it is used with {weights!r}",
                hint="rebuild it with the same --pretrained as the model (a tag and a local file of the "
                     "same weights count as different: use the same form in both places)")


def _invalid(where: str, problem: str) -> InputFileError:
    return InputFileError(f"{where}: not a valid concept bank: {problem}",
                          hint="rebuild it with `lss build-concepts`")


def _check_unit_rows(x: torch.Tensor, name: str, where: str) -> None:
    import torch

    if x.dtype != torch.float32:
        raise _invalid(where, f"{name} is {x.dtype}, expected float32")
    if not torch.isfinite(x).all():
        raise _invalid(where, f"{name} has non-finite values")
    if x.shape[0] and ((x.norm(dim=1) - 1).abs().max() > NORM_TOLERANCE):
        raise _invalid(where, f"{name} rows are not unit length")


def validate_bank(bank: ConceptBank, where: str = "concept bank") -> None:
    """Shapes, dtypes, finiteness, unit rows, owners and names consistent; raises InputFileError."""
    import torch

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
    from safetensors.torch import save_file

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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata={k: json.dumps(v, ensure_ascii=False) for k, v in meta.items()})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _read_bank_file(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from safetensors import SafetensorError

    try:
        from safetensors import safe_open

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
                      expect_dim: int | None = None) -> ConceptBank:
    """Read and validate a concept bank; with `expect_*`, refuse one built for another model.

    `expect_model` is the open_clip model name and `expect_weights` the `Clip.weights_id` of the
    model the bank will be used with; a mismatch raises `ConceptBankMismatchError` naming both.
    """
    import torch

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
    bank.check_model(expect_model, expect_weights, where=str(path))
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
        "templates": len(meta.get("templates", [])),
        "truncated_descriptions": meta.get("num_truncated"),
        "truncated_category_prompts": meta.get("num_truncated_category_prompts"),
        "missing_categories": meta.get("missing_categories", []),
        "sources": meta.get("sources", {}),
        "lss_cli_version": meta.get("lss_cli_version"), "created": meta.get("created"),
    }


# --------------------------------------------------------------------------------------------
# The whole command
# --------------------------------------------------------------------------------------------


def _check_output(cfg: ConceptsConfig) -> None:
    out = Path(cfg.out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory", hint="give a file path, e.g. concepts.safetensors")
    if out.exists() and not cfg.overwrite:
        raise ConfigError(f"{out} exists", hint="pass --overwrite to replace it, or choose another --out")


def plan_concepts(cfg: ConceptsConfig) -> dict[str, Any]:
    """`--dry-run`: check every input and the model name; return the counts. Encodes nothing."""
    from lss_cli.models.clip import check_model

    inputs = gather_inputs(cfg)
    _check_output(cfg)
    weights = check_model(cfg.model, cfg.pretrained)
    return {"dry_run": True, "out": cfg.out, "model": cfg.model, "pretrained": cfg.pretrained,
            "weights_id": weights, **inputs.counts(), "missing": inputs.missing,
            "torn_lines": inputs.sources["descriptions"]["torn_lines"]}


def _metadata(clip: Clip, inputs: ConceptInputs, truncated: list[int], truncated_prompts: int) -> dict[str, Any]:
    from lss_cli import __version__

    return {
        "model": clip.name, "pretrained": clip.pretrained, "weights_id": clip.weights_id,
        "templates": list(inputs.templates.templates),
        "sources": inputs.sources,
        "num_truncated": len(truncated), "truncated_descriptions": truncated,
        "num_truncated_category_prompts": truncated_prompts,
        "missing_categories": inputs.missing, "dropped_duplicates": inputs.dropped_duplicates,
        "context_length": clip.context_length,
        "lss_cli_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def encode_inputs(clip: Clip, inputs: ConceptInputs, batch_size: int, progress: Progress | None = None,
                  prompt_tokens: torch.Tensor | None = None, description_tokens: torch.Tensor | None = None
                  ) -> ConceptBank:
    """Encode checked inputs into a bank (metadata left for the caller). The optional tokens are
    the category prompts' and the descriptions' from `tokenize_checked`."""
    import torch

    category = build_category_bank(clip, inputs.category_names, inputs.templates, batch_size, progress=progress,
                                   tokens=prompt_tokens)
    description = encode_texts(clip, inputs.description_texts, batch_size, progress=progress,
                               tokens=description_tokens)  # [M, D]
    owner = torch.tensor(inputs.description_owner, dtype=torch.int64)  # [M]
    return ConceptBank(category, description, owner, inputs.category_names, inputs.description_texts,
                       len(inputs.label_names))


def build_concepts(cfg: ConceptsConfig) -> dict[str, Any]:
    """`lss build-concepts`: check inputs, encode both banks, write `cfg.out`; returns a summary."""
    from lss_cli.models.clip import load_clip
    from lss_cli.runtime.device import resolve_device
    from lss_cli.runtime.progress import log, make_progress, warn

    inputs = gather_inputs(cfg)
    _check_output(cfg)
    torn = inputs.sources["descriptions"]["torn_lines"]
    if torn:
        warn(f"{cfg.descriptions}: {torn} unreadable line(s) skipped (an interrupted write?)")
    if inputs.missing:
        warn(f"{len(inputs.missing)} categories have no descriptions: {_list_some(inputs.missing, 5)}")
    device = resolve_device(cfg.device)
    clip = load_clip(cfg.model, cfg.pretrained, device=device)
    prompts = render_prompts(inputs.category_names, inputs.templates.templates)
    prompt_tokens, prompt_cut = tokenize_checked(clip, prompts)  # tokenised once: checked, then encoded
    description_tokens, description_cut = tokenize_checked(clip, inputs.description_texts)
    truncated = description_cut.nonzero().flatten().tolist()
    truncated_prompts = int(prompt_cut.sum())
    if truncated:
        warn(f"{len(truncated)} description(s) exceed the {clip.context_length}-token text context and were "
             f"truncated, e.g. {inputs.description_texts[truncated[0]][:80]!r}...")
    log(f"encoding {len(prompts)} category prompts and {len(inputs.description_texts)} descriptions "
        f"with {cfg.model} on {device}")
    start = time.perf_counter()
    with make_progress() as bar:
        task = bar.add_task("encoding", total=len(prompts) + len(inputs.description_texts))
        bank = encode_inputs(clip, inputs, cfg.batch_size, progress=lambda n: bar.advance(task, n),
                             prompt_tokens=prompt_tokens, description_tokens=description_tokens)
    seconds = time.perf_counter() - start
    bank.metadata = _metadata(clip, inputs, truncated, truncated_prompts)
    save_concept_bank(bank, cfg.out)
    return {**bank_summary(bank, cfg.out), "dropped_duplicates": inputs.dropped_duplicates, "torn_lines": torn,
            "device": str(device), "encode_seconds": round(seconds, 3)}


__all__ = [
    "ConceptBank", "ConceptBankMismatchError", "ConceptInputs", "TemplateSet", "bank_summary",
    "build_category_bank", "build_concepts", "encode_inputs", "encode_texts", "gather_inputs",
    "load_concept_bank", "load_templates", "plan_concepts", "read_text_list", "render_prompts",
    "save_concept_bank", "tokenize_checked", "truncated_mask", "validate_bank",
]

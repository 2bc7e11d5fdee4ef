"""`lss build-concepts` as a library call: check the inputs, encode both banks, write the file.

`plan_concepts` is the `--dry-run` (inputs and model name checked, nothing encoded or loaded: its
`weights_id` is the weights' source, the content id needs the weights);
`build_concepts` tokenises every text once, for the truncation check and the encoding both,
and records provenance and truncation counts in the bank's metadata.
"""

from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lss_cli import __version__
from lss_cli.concepts.bank import ConceptBank, bank_summary, save_concept_bank
from lss_cli.concepts.encode import Progress, build_category_bank, encode_texts, tokenize_checked
from lss_cli.concepts.inputs import ConceptInputs, _list_some, gather_inputs
from lss_cli.concepts.templates import render_prompts
from lss_cli.errors import ConfigError
from lss_cli.models.clip import check_model, load_clip
from lss_cli.runtime.device import resolve_device
from lss_cli.runtime.outputs import check_output
from lss_cli.runtime.progress import log, make_progress, warn

if TYPE_CHECKING:
    from lss_cli.config import ConceptsConfig
    from lss_cli.models.clip import Clip


def _check_output(cfg: ConceptsConfig, create: bool = True) -> None:
    """--out is a new file (or --overwrite) in a folder that can be written, found before encoding.
    `create=False` (the dry run) leaves a missing folder uncreated: it is then checked by its parent."""
    out = Path(cfg.out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory", hint="give a file path, e.g. concepts.safetensors")
    if out.exists() and not cfg.overwrite:
        raise ConfigError(f"{out} exists", hint="pass --overwrite to replace it, or choose another --out")
    if create:
        check_output(out, "concept bank")


def plan_concepts(cfg: ConceptsConfig) -> dict[str, Any]:
    """`--dry-run`: check every input and the model name; return the counts. Encodes nothing."""
    inputs = gather_inputs(cfg)
    _check_output(cfg, create=False)
    weights = check_model(cfg.model, cfg.pretrained)
    return {"dry_run": True, "out": cfg.out, "model": cfg.model, "pretrained": cfg.pretrained,
            "weights_id": weights, **inputs.counts(), "missing": inputs.missing,
            "torn_lines": inputs.sources["descriptions"]["torn_lines"]}


def _metadata(clip: Clip, inputs: ConceptInputs, truncated: list[int], truncated_prompts: int) -> dict[str, Any]:
    return {
        "model": clip.name, "pretrained": clip.pretrained, "weights_id": clip.weights_id,
        "weights_source": clip.weights_source,
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
    category = build_category_bank(clip, inputs.category_names, inputs.templates, batch_size, progress=progress,
                                   tokens=prompt_tokens)  # [K, D]
    description = encode_texts(clip, inputs.description_texts, batch_size, progress=progress,
                               tokens=description_tokens)  # [M, D]
    owner = torch.tensor(inputs.description_owner, dtype=torch.int64)  # [M]
    return ConceptBank(category, description, owner, inputs.category_names, inputs.description_texts,
                       len(inputs.label_names))


def build_concepts(cfg: ConceptsConfig) -> dict[str, Any]:
    """`lss build-concepts`: check inputs, encode both banks, write `cfg.out`; returns a summary."""
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

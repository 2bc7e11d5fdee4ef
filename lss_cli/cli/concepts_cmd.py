"""`lss build-concepts` and `lss concepts info`: the concept banks of the frozen CLIP text tower."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lss_cli.cli import CONTEXT, app
from lss_cli.cli.options import DryRun, Json, Quiet, config_default, device_option, flag, split_config_args
from lss_cli.config import ConceptsConfig

concepts_app = typer.Typer(help="Inspect concept banks built by `lss build-concepts`.",
                           context_settings=CONTEXT, no_args_is_help=True)
app.add_typer(concepts_app, name="concepts")

Text = str | None
Device = device_option(ConceptsConfig)


def _default(key: str, meaning: str | None = None) -> str:
    return config_default(ConceptsConfig, key, meaning)


ConfigArgs = Annotated[list[str] | None, typer.Argument(
    metavar="[CONFIG.yaml] [KEY=VALUE]...", show_default=False,
    help="Optional YAML config (keys as in `lss config show --for build-concepts`), then dotted overrides.")]


@app.command("build-concepts")
def build_concepts(
    args: ConfigArgs = None,
    labels: Annotated[Text, typer.Option(help="Category names: built-in label set (`lss labels list`) or a file." + _default("labels"))] = None,
    descriptions: Annotated[Text, typer.Option(help="Descriptions JSONL from `lss describe` (or the synthetic set's); "
                                            "required, here or as config key descriptions.")] = None,
    out: Annotated[Text, typer.Option(help="Output bank file." + _default("out"))] = None,
    model: Annotated[Text, typer.Option(help="open_clip model name; lss-tiny for CPU smoke runs." + _default("model"))] = None,
    pretrained: Annotated[Text, typer.Option(help="open_clip tag, weights file, local-dir:PATH, or none." + _default("pretrained"))] = None,
    templates: Annotated[Text, typer.Option(help="Category template set: prompts/ name or YAML path." + _default("templates"))] = None,
    extra_words: Annotated[Text, typer.Option(help="Extra category words, one per line (vocabulary expansion)." + _default("extra_words"))] = None,
    extra_sentences: Annotated[Text, typer.Option(help="Extra description sentences without a category, one per line."
                                               + _default("extra_sentences"))] = None,
    allow_missing: Annotated[bool, flag("--allow-missing", help="Allow categories with no descriptions.")] = False,
    device: Device = None,
    batch_size: Annotated[int | None, typer.Option(help="Texts per text-encoder call." + _default("batch_size"))] = None,
    overwrite: Annotated[bool, flag("--overwrite", help="Replace an existing --out file.")] = False,
    dry_run: DryRun = False,
    quiet: Quiet = False,
    json_out: Json = False,
) -> None:
    """Encode category names (template ensemble) and descriptions with the frozen CLIP text tower.

    Writes a safetensors file with `category` [K, D], `description` [M, D] and
    `description_owner` [M], plus provenance; arguments: an optional YAML config, then dotted
    key=value overrides (flags win over both).

    Examples:

        lss build-concepts --labels lss530 --descriptions descriptions.jsonl --out concepts.safetensors

        lss build-concepts --labels runs/data/synthetic/classes.txt --descriptions runs/data/synthetic/descriptions.jsonl --model lss-tiny --pretrained none --out tiny.safetensors

        lss build-concepts concepts.yaml batch_size=512 --dry-run
    """
    from lss_cli.config import ConceptsConfig, load_config
    from lss_cli.runtime.progress import set_quiet

    set_quiet(quiet)
    path, overrides = split_config_args(args)
    flags = {"labels": labels, "descriptions": descriptions, "out": out, "model": model, "pretrained": pretrained,
             "templates": templates, "extra_words": extra_words, "extra_sentences": extra_sentences,
             "allow_missing": allow_missing or None, "device": device, "batch_size": batch_size,
             "overwrite": overwrite or None}
    cfg = load_config(ConceptsConfig, path, overrides, flags=flags)
    if dry_run:
        from lss_cli.concepts.build import plan_concepts

        return _render_plan(plan_concepts(cfg), json_out)
    from lss_cli.concepts.build import build_concepts as run

    _render_summary("Concept bank written", run(cfg), json_out)


@concepts_app.command("info")
def info(
    file: Annotated[Path, typer.Argument(help="A concept bank (.safetensors) from `lss build-concepts`.")],
    json_out: Json = False,
) -> None:
    """Summarise a concept bank: sizes, CLIP model, sources, truncated descriptions. Validates it too.

    Example: lss concepts info concepts.safetensors
    """
    from lss_cli.concepts.bank import bank_summary, load_concept_bank

    _render_summary("Concept bank", bank_summary(load_concept_bank(file), file), json_out)


def _render_plan(plan: dict[str, Any], json_out: bool) -> None:
    from lss_cli.cli.render import kv_table, print_json, stdout

    if json_out:
        return print_json(plan)
    stdout.print(kv_table("build-concepts --dry-run (nothing encoded)", {
        "model": f"{plan['model']} ({plan['weights_id']})",
        "categories": f"{plan['categories']} ({plan['label_categories']} labels + {plan['extra_words']} extra words)",
        "descriptions": f"{plan['descriptions']} ({plan['owned_descriptions']} owned + {plan['extra_sentences']} extra sentences)",
        "texts to encode": f"{plan['category_prompts']} category prompts ({plan['templates']} templates) "
                           f"+ {plan['descriptions']} descriptions",
        "missing": ", ".join(plan["missing"]) or "none",
        "dropped duplicates": plan["dropped_duplicates"],
        "torn lines": plan["torn_lines"],
        "out": plan["out"],
    }))


def _render_summary(title: str, s: dict[str, Any], json_out: bool) -> None:
    from lss_cli.cli.render import kv_table, print_json, stdout

    if json_out:
        return print_json(s)
    rows = {
        "file": s["file"],
        "K categories": f"{s['K']} ({s['label_categories']} labels + {s['extra_words']} extra words)",
        "M descriptions": f"{s['M']} ({s['owned_descriptions']} owned + {s['extra_sentences']} extra sentences)",
        "D": s["D"],
        "concept alignment": f"{s['ca_categories']} categories, {s['ca_descriptions']} descriptions",
        "model": f"{s['model']} (pretrained {s['pretrained']}, weights {s.get('weights_source') or s['weights_id']})",
        "weights id": s["weights_id"],
        "templates": s["templates"],
        "truncated": f"{s['truncated_descriptions']} descriptions, {s['truncated_category_prompts']} category prompts",
        "missing categories": len(s["missing_categories"]),
    }
    for key, src in (s.get("sources") or {}).items():
        if src:
            where = src.get("path") or src.get("source")
            digest = src.get("sha256") or src.get("names_sha256")
            rows[f"source: {key}"] = f"{where} (sha256 {digest[:12]})"
    if "encode_seconds" in s:
        rows["encoding"] = f"{s['encode_seconds']} s on {s['device']}"
    rows["lss_cli"] = f"{s['lss_cli_version']}, {s['created']}"
    stdout.print(kv_table(title, rows))

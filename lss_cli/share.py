"""Sharing a trained model: the Hub-ready export folder and `lss push`.

`export_folder` writes, for one training checkpoint, the folder a Hugging Face model repo holds:

- `model.safetensors`: the `lss export` file, unchanged (`--checkpoint DIR/model.safetensors`,
  `--checkpoint DIR` and `--checkpoint hf-hub:org/name` all load it);
- `config.json`: architecture, base CLIP weights, concept bank and training summary, as data;
- `README.md`: the model card, YAML metadata (library, licence, tags, base model, model-index
  with the evaluation results) and a body a reader can act on (how to load it, the training
  config, the concept bank, results with their protocol, the command lines that made it).

Results enter the card by one rule: a results.json is the model's when its `model_id` is the
export's (`sha256:` of model.safetensors) or the checkpoint's (`ckpt-sha256:` of its teacher), or
when its `checkpoint` is an export file of the same checkpoint and step (the same teacher tensors;
the file's bytes differ when the checkpoint path was spelt differently). `--results` names files or
folders (searched for results.json); without it `runs/eval-*/` under the working folder is searched.
A file named directly that is another model's is an error; one found in a folder is skipped.

The folder is written as a hidden sibling and renamed into place at the end, so a folder under
the final name is always complete.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from lss_cli import __version__
from lss_cli.concepts.bank import load_concept_bank
from lss_cli.config import TrainConfig, dump_yaml, from_dict
from lss_cli.errors import ConfigError, InputFileError, LssError
from lss_cli.hashing import file_sha256
from lss_cli.models.artefact import CONFIG_FILE, FORMAT, MODEL_FILE, write_teacher
from lss_cli.models.hub import PREFIX, check_repo_id, is_hub_name, parse_hub_name, upload_export
from lss_cli.runtime.checkpoint import Checkpoint, load_checkpoint
from lss_cli.runtime.outputs import check_output_dir, fsync_dir, os_reason, write_text_atomic

CARD_FILE = "README.md"
EXPORT_FILES = (MODEL_FILE, CONFIG_FILE, CARD_FILE)
DEFAULT_RESULTS_GLOB = "runs/eval-*/**/results.json"  # where `lss eval` puts results by default
TAGS = ["video-classification", "zero-shot", "clip", "lss-cli"]
NAMES = {"top1": "top-1", "top5": "top-5"}  # results.json metric -> name in the card

# Licences of base weights, by open_clip pretrained tag, and where each fact comes from. A trained
# model derives from its base weights, so the card carries their licence; anything not listed is
# "other" and the card says the licence is unknown.
BASE_LICENCES: tuple[tuple[str, str, str], ...] = (  # (tag prefix, licence id, source of the fact)
    ("openai", "mit", "the openai/CLIP repository's LICENSE (MIT), which covers the released weights"),
    ("laion", "mit", "the laion/CLIP-* model cards on the Hugging Face Hub (license: mit); "
                     "mlfoundations/open_clip, which trained them, is MIT too"),
    ("synthetic-world", "mit", "lss-cli's own licence (pyproject.toml: MIT): `lss pretrain-tiny` made them"),
)


def base_licence(pretrained: str | None) -> tuple[str, str]:
    """(licence id for the card's metadata, a sentence on where it comes from)."""
    if pretrained is None or pretrained.lower() in ("none", "random"):
        return "mit", "no pretrained weights (random init); lss-cli's own licence (MIT)"
    for prefix, licence, source in BASE_LICENCES:
        if pretrained.startswith(prefix):
            return licence, f"base weights `{pretrained}`: {source}"
    return "other", f"base weights `{pretrained}`: licence unknown to lss-cli; check where they came from"


# --------------------------------------------------------------------------------------------
# Export folder
# --------------------------------------------------------------------------------------------
def export_folder(checkpoint: str | Path, out: str | Path, *, results: list[str | Path] = (),
                  repo: str | None = None, licence: str | None = None, overwrite: bool = False,
                  search_root: str | Path = ".") -> dict[str, Any]:
    """Write the Hub-ready folder of a training checkpoint (see the module docstring)."""
    out = Path(out)
    if repo is not None:
        check_repo_id(repo)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConfigError(f"--out {out} exists and is not empty", hint="pass another folder, or --overwrite to replace it")
    check_output_dir(out.parent, "export folder")
    named = _results_files(results)  # a wrong --results fails before the checkpoint is read
    ck = load_checkpoint(checkpoint)
    tmp = out.parent / f".{out.name}.tmp-{secrets.token_hex(4)}-{os.getpid()}"
    try:
        tmp.mkdir()
        exported = write_teacher(ck, tmp / MODEL_FILE)
        ids = {f"sha256:{file_sha256(tmp / MODEL_FILE)}", f"ckpt-sha256:{file_sha256(ck.path / 'teacher.safetensors')}"}
        if not results:
            named = [(p, _read_results(p), False) for p in sorted(Path(search_root).glob(DEFAULT_RESULTS_GLOB))
                     if _readable(p)]
        found = _matching_results(named, ids, ck)
        cfg = from_dict(TrainConfig, ck.meta["config"])
        info = _describe(ck, cfg, exported, found, repo, licence)
        write_text_atomic(tmp / CONFIG_FILE, json.dumps(info["config"], indent=2) + "\n")
        write_text_atomic(tmp / CARD_FILE, model_card(info))
        _move_into_place(tmp, out)
    except OSError as e:  # disk full, permissions changed: nothing is left under the final name
        shutil.rmtree(tmp, ignore_errors=True)
        raise LssError(f"cannot write the export folder {out}: {os_reason(e)}",
                       hint="free some disk space, or pass --out in a folder you can write to") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": str(out), "step": ck.step, "model": cfg.model.name, "model_id": info["config"]["model_id"],
            "results": [str(p) for p, _ in found], "licence": info["licence"],
            "files": sorted(p.name for p in out.iterdir())}


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder to `out`; a replaced one is moved aside first, then removed."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
        out.rename(old)
    try:
        tmp.rename(out)
    except OSError:
        if old is not None:
            old.rename(out)
        raise
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _results_files(paths: list[str | Path]) -> list[tuple[Path, dict[str, Any], bool]]:
    """(file, its results, named directly?) for each --results: a file, or a folder's results.json
    files (a folder may hold other models' results: only a file named directly must match)."""
    files: list[tuple[Path, dict[str, Any], bool]] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += [(f, _read_results(f), False) for f in sorted(p.rglob("results.json")) if _readable(f)]
        elif p.is_file():
            files.append((p, _read_results(p), True))
        else:
            raise InputFileError(f"--results {p} not found", hint="pass a results.json of `lss eval` or a folder holding some")
    return files


def _readable(path: Path) -> bool:
    try:
        _read_results(path)
        return True
    except InputFileError:
        return False


def _read_results(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputFileError(f"{path} is not a readable results file: {e}") from None
    if not isinstance(doc, dict) or not {"protocol", "model_id", "summary"} <= doc.keys():
        raise InputFileError(f"{path} is not a results.json of `lss eval` (no protocol / model_id / summary)")
    return doc


def _same_checkpoint_export(source: Any, ck: Checkpoint) -> bool:
    """Is `source` an export file of `ck` (same checkpoint folder and step)?"""
    path = Path(str(source))
    if not (path.is_file() and path.suffix == ".safetensors"):
        return False
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
        return (meta.get("format") == FORMAT and meta.get("step") == str(ck.step)
                and Path(meta.get("checkpoint", "")).exists() and os.path.samefile(meta["checkpoint"], ck.path))
    except (OSError, SafetensorError):
        return False


def _matching_results(candidates: list[tuple[Path, dict[str, Any], bool]], ids: set[str],
                      ck: Checkpoint) -> list[tuple[Path, dict[str, Any]]]:
    kept = []
    for path, doc, named in candidates:
        if doc["model_id"] in ids or _same_checkpoint_export(doc.get("checkpoint"), ck):
            kept.append((path, doc))
        elif named:
            raise InputFileError(f"--results {path} evaluated another model ({doc['model_id']}, {doc.get('checkpoint')})",
                                 hint=f"pass results of this checkpoint (model id one of {', '.join(sorted(ids))})")
    return kept


# --------------------------------------------------------------------------------------------
# What the card and config.json say
# --------------------------------------------------------------------------------------------
def _command(argv: list[str] | None) -> str | None:
    """The command line a run recorded: `lss ...` when it was the CLI (the `lss` script or
    `python -m lss_cli`, as under torchrun), else as it was (a script using the library)."""
    if not argv:
        return None
    program = Path(argv[0])
    if program.name == "lss" or (program.name == "__main__.py" and program.parent.name == "lss_cli"):
        return shlex.join(["lss", *argv[1:]])
    return shlex.join(["python", *argv])


def _protocol_lines(details: dict[str, Any] | None) -> list[str]:
    """The protocol as `key: value` lines; a prompt-template set by name, version and sha256, and
    no local paths (they mean nothing to a reader of the card)."""
    lines = []
    for key, value in (details or {}).items():
        if isinstance(value, dict):
            shown = {k: v for k, v in value.items() if k in ("name", "version", "sha256", "definition", "pairs")}
            value = json.dumps(shown or value, ensure_ascii=False)
        lines.append(f"  - {key}: {value}")
    return lines


def _run_dir(ck: Checkpoint) -> Path | None:
    """The training run dir of a checkpoint (run/checkpoints/step_N or run/checkpoints/best)."""
    for folder in (ck.path.parent.parent, ck.path.parent, ck.path):
        if (folder / "config.yaml").is_file():
            return folder
    return None


def _bank_info(path: str) -> dict[str, Any]:
    try:
        bank = load_concept_bank(path)
    except LssError as e:
        return {"file": path, "available": False, "why": e.message}
    return {"file": Path(path).name, "available": True, "sha256": file_sha256(path), "categories": bank.K,
            "descriptions": bank.M, "label_categories": bank.num_label_categories, "model": bank.model,
            "weights_id": bank.weights_id, "first_categories": bank.category_names[:20]}


def _result_summary(path: Path, doc: dict[str, Any]) -> dict[str, Any]:
    splits = [str(s.get("split")) for s in doc.get("splits", []) if s.get("split")]
    return {"file": str(path), "protocol": doc["protocol"], "dataset": doc.get("dataset"),
            "splits": splits, "summary": doc["summary"], "views": doc.get("views"),
            "protocol_details": doc.get("protocol_details"),
            "command": _command((doc.get("environment") or {}).get("argv"))}


def _describe(ck: Checkpoint, cfg: TrainConfig, exported: dict[str, Any], found: list[tuple[Path, dict[str, Any]]],
              repo: str | None, licence: str | None) -> dict[str, Any]:
    run = _run_dir(ck)
    env = json.loads((run / "env.json").read_text()) if run is not None and (run / "env.json").is_file() else {}
    base = cfg.model.pretrained if not is_hub_name(cfg.model.name) else cfg.model.name
    licence_id, licence_source = base_licence(base)
    if licence is not None:
        licence_id, licence_source = licence, "chosen at export (--license)"
    base_repo = next((parse_hub_name(n).repo for n in (cfg.model.name, cfg.model.pretrained) if is_hub_name(n)), None)
    config = {
        "format": FORMAT, "library_name": "lss-cli", "lss_cli_version": __version__,
        "model_id": f"sha256:{file_sha256(Path(exported['out']))}",
        "architecture": {"clip_model": cfg.model.name, "temporal": cfg.model.temporal,
                         "num_frames": cfg.model.num_frames, "image_size": exported["image_size"],
                         "embed_dim": exported["embed_dim"]},
        "base_weights": {"pretrained": cfg.model.pretrained, "weights_id": exported["clip_weights_id"],
                         "weights_source": exported["clip_weights_source"], "license": licence_id},
        "concept_bank": _bank_info(cfg.loss.concepts),
        "training": {"step": ck.step, "epochs": cfg.optim.epochs, "dataset": cfg.data.dataset,
                     "split": cfg.data.split, "seed": cfg.run.seed,
                     "command": _command(env.get("argv")), "git_sha": env.get("git_sha")},
    }
    return {"config": config, "licence": licence_id, "licence_source": licence_source, "base_repo": base_repo,
            "repo": repo, "train_yaml": dump_yaml(cfg),
            "results": [_result_summary(p, d) for p, d in found]}


def _yaml_scalar(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False)  # a JSON scalar is a valid YAML flow scalar


def _yaml(value: Any, indent: int = 0) -> list[str]:
    """Block YAML of plain data (what the card's front matter needs, without a YAML writer)."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{k}:")
                lines += _yaml(v, indent + 2)
            else:
                lines.append(f"{pad}{k}: {_yaml_scalar(v)}")
    else:
        for item in value:
            sub = _yaml(item, indent + 2) if isinstance(item, (dict, list)) else [f"{pad}  {_yaml_scalar(item)}"]
            lines.append(f"{pad}- {sub[0].strip()}")
            lines += sub[1:]
    return lines


def _metadata(info: dict[str, Any]) -> dict[str, Any]:
    name = info["repo"].split("/")[-1] if info["repo"] else "lss-video-model"
    meta: dict[str, Any] = {"library_name": "lss-cli", "license": info["licence"], "tags": TAGS,
                            "pipeline_tag": "video-classification"}
    if info["base_repo"]:
        meta["base_model"] = info["base_repo"]
    entries = []
    for r in info["results"]:
        metrics = [{"type": "accuracy", "name": f"{NAMES[m]} ({r['protocol']}, mean of {len(r['splits']) or 1} split(s))",
                    "value": round(100 * r["summary"][m]["mean"], 2)}
                   for m in ("top1", "top5") if m in r["summary"]]
        if metrics:
            entries.append({"task": {"type": "video-classification", "name": f"{r['protocol']} video classification"},
                            "dataset": {"name": r["dataset"], "type": r["dataset"],
                                        "split": ",".join(r["splits"]) or "test"},
                            "metrics": metrics})
    if entries:
        meta["model-index"] = [{"name": name, "results": entries}]
    return meta


def model_card(info: dict[str, Any]) -> str:
    """README.md of the export folder: YAML front matter, then the card for readers."""
    c = info["config"]
    arch, bank, train = c["architecture"], c["concept_bank"], c["training"]
    target = f"{PREFIX}{info['repo']}" if info["repo"] else f"{PREFIX}<org>/<name>"
    out = ["---", *_yaml(_metadata(info)), "---", "",
           f"# {info['repo'] or 'LSS video model'}", "",
           f"A video encoder made from the image CLIP model `{arch['clip_model']}` (weights "
           f"`{c['base_weights']['pretrained']}`) by LSS self-distillation on unlabelled videos, with "
           f"{arch['temporal']} temporal modelling over {arch['num_frames']} frames, plus CLIP's text tower: "
           "zero-shot video classification from class names. Made with "
           f"[lss-cli](https://pypi.org/project/lss-cli/) {c['lss_cli_version']}.", "",
           "## Use", "", "```bash", "pip install lss-cli",
           f"lss eval zero-shot --dataset ucf101 --root data/ucf101 --checkpoint {target}",
           f'lss predict clip.mp4 --labels "juggling,skateboarding,cooking" --checkpoint {target}', "```", "",
           f"The weights are `{MODEL_FILE}` (format `{FORMAT}`; model id `{c['model_id']}`); `--checkpoint` also "
           f"takes that file or this folder. With `HF_HUB_OFFLINE=1` the model loads from the local Hub cache.", "",
           "## Training", "",
           f"{train['step']} steps ({train['epochs']} epochs) on `{train['dataset']}` ({train['split']} split, "
           f"labels unused), seed {train['seed']}. The run's config:", "",
           "<details><summary>config.yaml</summary>", "", "```yaml", info["train_yaml"].rstrip(), "```", "",
           "</details>", "", "## Concept bank", ""]
    if bank["available"]:
        shown = ", ".join(bank["first_categories"])
        out += [f"`{bank['file']}`, sha256 `{bank['sha256']}`: {bank['categories']} categories "
                f"({bank['label_categories']} label names), {bank['descriptions']} descriptions, built with "
                f"`{bank['model']}` ({bank['weights_id']}). First categories: {shown}"
                + (", ..." if bank["categories"] > len(bank["first_categories"]) else "") + ".", ""]
    else:
        out += [f"The bank the run trained with (`{bank['file']}`) was not readable at export: {bank['why']}.", ""]
    out += ["## Evaluation", ""]
    if info["results"]:
        out += ["| protocol | dataset | splits | top-1 (%) | top-5 (%) | views |", "|---|---|---|---|---|---|"]
        for r in info["results"]:
            cell = {m: (f"{100 * r['summary'][m]['mean']:.2f} ± {100 * r['summary'][m]['std']:.2f}"
                        if m in r["summary"] else "-") for m in ("top1", "top5")}
            views = r["views"] or {}
            shown_views = f"{views.get('count', '?')} x {views.get('num_frames', '?')} frames" if views else "-"
            out.append(f"| {r['protocol']} | {r['dataset']} | {', '.join(r['splits']) or '-'} | {cell['top1']} | "
                       f"{cell['top5']} | {shown_views} |")
        out += ["", "Protocols, as recorded in each results.json:", ""]
        for r in info["results"]:
            out += [f"- {r['protocol']} on {r['dataset']}:", *_protocol_lines(r["protocol_details"])]
        out.append("")
    else:
        out += ["No evaluation results were given at export (`lss export --hub --results R.json`).", ""]
    commands = [("train", train["command"])] + [(f"eval ({r['protocol']}, {r['dataset']})", r["command"])
                                                 for r in info["results"]]
    out += ["## Command lines", "", "```bash"]
    out += [f"# {what}\n{cmd}" for what, cmd in commands if cmd] or ["# not recorded"]
    out += ["```", "", "## Licence", "",
            f"`{info['licence']}`: {info['licence_source']}."
            + (f" Base model: [{info['base_repo']}](https://huggingface.co/{info['base_repo']})." if info["base_repo"] else ""),
            ""]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Push
# --------------------------------------------------------------------------------------------
def push_folder(folder: str | Path, repo: str, *, private: bool = False, revision: str | None = None,
                dry_run: bool = False) -> dict[str, Any]:
    """Upload an export folder to the Hub (or, with `dry_run`, list what would be uploaded)."""
    folder = Path(folder)
    check_repo_id(repo)
    missing = [f for f in EXPORT_FILES if not (folder / f).is_file()]
    if not folder.is_dir() or missing:
        raise InputFileError(f"{folder} is not an export folder" + (f" (no {', '.join(missing)})" if folder.is_dir() else ""),
                             hint="write one with `lss export RUN --hub --out DIR`")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(folder).parts))
    plan = {"repo": repo, "revision": revision or "main", "private": private,
            "files": {str(p.relative_to(folder)): p.stat().st_size for p in files}}
    if dry_run:
        return {**plan, "dry_run": True}
    return {**plan, **upload_export(folder, repo, private=private, revision=revision)}
